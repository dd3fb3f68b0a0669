//! An in-memory index of the clinical datasets, per version of the data, for cohort criteria:
//! what a feasibility engine keeps so that a question it has never seen costs lookups rather
//! than scans (BENCHMARKS.md §7: the DataFusion route scans ~1 million observations for one
//! lab criterion, 30–60 ms; this index answers it in a few).
//!
//! - **Codings**: each `codings` dataset sorted by (element, system, code), every coding
//!   pointing at the row of the dataset its resource is in (resolved once, by `resource`).
//!   A code set is a few binary searches.
//! - **Columns**: a dataset's columns that criteria read (patient key, value, unit, times, a
//!   link's reference), loaded whole on first use, in one fixed row order.
//!
//! Only datasets imported from FHIR (model `fhir/<x>`) are indexed. The index lives in the
//! `Catalogue`, so new data gets a new, empty index; it answers exactly what the DataFusion
//! route answers (the e2e tests compare both on every MII query), and anything it cannot
//! answer (a column of another type, a memory bound reached) goes the DataFusion route.
//! Patient sets stay inside the node, as with the criterion cache: every released number
//! still comes from the query over them, through the same privacy checks.

use crate::criteria::resource_types;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray, UInt32Array, new_empty_array,
};
use datafusion::arrow::compute::{cast, concat, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;
use datafusion::prelude::SessionContext;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::OnceCell;
use verbund_proto::v1 as pb;
use verbund_query::cohort::{CodeSet, RESOURCE};

/// Memory the index may hold (codings and loaded columns); past it, criteria that need more
/// go the DataFusion route. 100,000 patients with 1.6 million resources need ~120 MiB.
pub(crate) const INDEX_BYTES: usize = 512 * 1024 * 1024;

/// A row of an indexed dataset: `dataset` indexes `CodingIndex::datasets`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Target {
    dataset: u32,
    row: u32,
}

/// One `codings` dataset, sorted by key.
struct CodingIndex {
    /// (element, system, code), sorted.
    keys: Vec<(Box<str>, Box<str>, Box<str>)>,
    /// `targets[starts[k]..starts[k + 1]]` are the rows with key `k`, sorted.
    starts: Vec<u32>,
    targets: Vec<Target>,
    datasets: Vec<String>,
}

impl CodingIndex {
    fn bytes(&self) -> usize {
        let keys: usize = self.keys.iter().map(|(e, s, c)| 48 + e.len() + s.len() + c.len()).sum();
        keys + self.starts.len() * 4 + self.targets.len() * std::mem::size_of::<Target>()
    }

    fn range(&self, k: usize) -> &[Target] {
        let (a, b) = (self.starts[k] as usize, self.starts[k + 1] as usize);
        &self.targets[a..b]
    }

    /// Rows of `dataset` with a coding in `set`, sorted and unique.
    fn rows(&self, set: &CodeSet, dataset: &str) -> Vec<u32> {
        let Some(d) = self.datasets.iter().position(|n| n == dataset) else { return Vec::new() };
        let d = d as u32;
        let element = set.element.as_str();
        let mut rows = Vec::new();
        let mut add = |targets: &[Target]| rows.extend(targets.iter().filter(|t| t.dataset == d).map(|t| t.row));
        for (system, codes) in &set.codes {
            for code in codes {
                let key = (element, system.as_str(), code.as_str());
                if let Ok(k) = self.keys.binary_search_by(|(e, s, c)| (&**e, &**s, &**c).cmp(&key)) {
                    add(self.range(k));
                }
            }
        }
        for (system, prefix) in &set.prefixes {
            let first = (element, system.as_str(), prefix.as_str());
            let mut k = self.keys.partition_point(|(e, s, c)| (&**e, &**s, &**c) < first);
            while let Some((e, s, c)) = self.keys.get(k) {
                if &**e != element || &**s != system || !c.starts_with(prefix.as_str()) {
                    break;
                }
                add(self.range(k));
                k += 1;
            }
        }
        rows.sort_unstable();
        rows.dedup();
        rows
    }
}

type Cell<T> = Arc<OnceCell<Option<Arc<T>>>>;

/// Every patient of the indexed datasets, numbered: criteria's patient sets are bit sets of
/// these ordinals, so that combining them hashes no key.
pub(crate) struct Ordinals {
    /// The patient key (as text) of each ordinal.
    pub(crate) keys: StringArray,
    /// Per indexed dataset, each row's patient ordinal (`u32::MAX`: no patient).
    pub(crate) rows: HashMap<String, Vec<u32>>,
}

impl Ordinals {
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The patients of `rows` of `dataset`.
    pub(crate) fn of_rows(&self, dataset: &str, rows: &[u32]) -> Option<crate::criteria::Bits> {
        let ordinals = self.rows.get(dataset)?;
        let mut bits = crate::criteria::Bits::empty(self.len());
        for &r in rows {
            match ordinals.get(r as usize) {
                Some(&o) if o != u32::MAX => bits.insert(o),
                _ => {}
            }
        }
        Some(bits)
    }

    /// The keys of a set, as a one-column text batch named `name`.
    pub(crate) fn batch(&self, bits: &crate::criteria::Bits, name: &str) -> Option<RecordBatch> {
        let at = UInt32Array::from_iter_values(bits.ones());
        let keys = take(&self.keys, &at, None).ok()?;
        let schema = Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, true)]));
        RecordBatch::try_new(schema, vec![keys]).ok()
    }
}

/// The index of one version of a node's data; filled on first use.
#[derive(Default)]
pub(crate) struct ClinicalIndex {
    codings: parking_lot::Mutex<HashMap<String, Cell<CodingIndex>>>,
    ordinals: OnceCell<Option<Arc<Ordinals>>>,
    columns: parking_lot::Mutex<HashMap<(String, String), Cell<ArrayRef>>>,
    /// Rows per dataset, as first loaded; a later load of another length is not used.
    rows: parking_lot::Mutex<HashMap<String, usize>>,
    bytes: AtomicUsize,
}

impl ClinicalIndex {
    /// The bytes the index holds now.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    fn reserve(&self, bytes: usize) -> bool {
        self.bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| (b + bytes <= INDEX_BYTES).then_some(b + bytes))
            .is_ok()
    }

    /// The patient dictionary, once some question built it.
    pub(crate) fn ordinals_built(&self) -> Option<Arc<Ordinals>> {
        self.ordinals.get().cloned().flatten()
    }

    /// Numbers the patients of every indexed dataset (built on first use).
    pub(crate) async fn ordinals(&self, ctx: &SessionContext, catalogue: &pb::Catalogue) -> Option<Arc<Ordinals>> {
        self.ordinals
            .get_or_init(|| async {
                let mut columns = Vec::new();
                for d in &catalogue.datasets {
                    // A dataset whose keys cannot be read is left out: its criteria go the
                    // DataFusion route (`of_rows` finds no ordinals for it).
                    if resource_types(&d.model).is_some()
                        && let Some(keys) = self.text(ctx, &d.name, &d.patient_key).await
                    {
                        columns.push((d.name.clone(), keys));
                    }
                }
                let mut ids: HashMap<&str, u32, ahash::RandomState> = HashMap::default();
                let mut keys: Vec<&str> = Vec::new();
                let mut rows = HashMap::new();
                for (name, column) in &columns {
                    let column = column.as_string::<i32>();
                    let ordinals: Vec<u32> = column
                        .iter()
                        .map(|key| match key {
                            None => u32::MAX,
                            Some(key) => *ids.entry(key).or_insert_with(|| {
                                keys.push(key);
                                keys.len() as u32 - 1
                            }),
                        })
                        .collect();
                    rows.insert(name.clone(), ordinals);
                }
                let ordinals = Ordinals { keys: StringArray::from(keys), rows };
                let bytes =
                    ordinals.keys.get_array_memory_size() + ordinals.rows.values().map(|r| r.len() * 4).sum::<usize>();
                self.reserve(bytes).then(|| Arc::new(ordinals))
            })
            .await
            .clone()
    }

    /// Rows of `dataset` (an indexed one) with a coding in `set`.
    pub(crate) async fn coded_rows(
        &self,
        ctx: &SessionContext,
        catalogue: &pb::Catalogue,
        set: &CodeSet,
        dataset: &str,
    ) -> Option<Vec<u32>> {
        let cell = self.codings.lock().entry(set.codings.clone()).or_default().clone();
        let index = cell.get_or_init(|| self.build_codings(ctx, catalogue, &set.codings)).await.clone()?;
        Some(index.rows(set, dataset))
    }

    /// One column of an indexed dataset, whole, in the index's row order.
    pub(crate) async fn column(&self, ctx: &SessionContext, dataset: &str, column: &str) -> Option<ArrayRef> {
        let key = (dataset.to_string(), column.to_string());
        let cell = self.columns.lock().entry(key).or_default().clone();
        let array = cell
            .get_or_init(|| async {
                let mut array = self.load(ctx, dataset, &[column]).await?.pop()?;
                // Text as Utf8 once, not cast at every use.
                if matches!(array.data_type(), DataType::Utf8View | DataType::LargeUtf8 | DataType::Dictionary(..)) {
                    array = cast(&array, &DataType::Utf8).ok()?;
                }
                self.reserve(array.get_array_memory_size()).then(|| Arc::new(array))
            })
            .await
            .clone()?;
        Some((*array).clone())
    }

    /// The column as text (patient keys and references compare as text, as `as_text` does).
    pub(crate) async fn text(&self, ctx: &SessionContext, dataset: &str, column: &str) -> Option<ArrayRef> {
        let array = self.column(ctx, dataset, column).await?;
        match array.data_type() {
            DataType::Utf8 => Some(array),
            _ => cast(&array, &DataType::Utf8).ok(),
        }
    }

    /// Rows of `dataset` as loaded.
    pub(crate) fn len(&self, dataset: &str) -> Option<usize> {
        self.rows.lock().get(dataset).copied()
    }

    /// Reads columns of a dataset, in one fixed row order: one partition, files whole and in
    /// order (DataFusion may otherwise interleave partitions, and columns read apart would
    /// not line up).
    async fn load(&self, ctx: &SessionContext, dataset: &str, columns: &[&str]) -> Option<Vec<ArrayRef>> {
        let mut state = ctx.state();
        let options = state.config_mut().options_mut();
        options.execution.target_partitions = 1;
        options.optimizer.repartition_file_scans = false;
        let ctx = SessionContext::new_with_state(state);
        let df = ctx.table(dataset).await.ok()?.select_columns(columns).ok()?;
        let schema = df.schema().as_arrow().clone();
        let batches: Vec<RecordBatch> = df.collect_partitioned().await.ok()?.into_iter().flatten().collect();
        let mut out = Vec::with_capacity(columns.len());
        for (i, field) in schema.fields().iter().enumerate() {
            let arrays: Vec<&dyn Array> = batches.iter().map(|b| b.column(i).as_ref()).collect();
            // An empty dataset is an empty column, not a failure.
            out.push(if arrays.is_empty() { new_empty_array(field.data_type()) } else { concat(&arrays).ok()? });
        }
        let len = out.first()?.len();
        if len > u32::MAX as usize {
            return None;
        }
        let mut rows = self.rows.lock();
        match rows.get(dataset) {
            Some(&n) if n != len => {
                tracing::warn!(dataset, "the criteria index read a different number of rows; not using it");
                return None;
            }
            Some(_) => {}
            None => {
                rows.insert(dataset.to_string(), len);
            }
        }
        Some(out)
    }

    /// Sorts a `codings` dataset by key and points each coding at its resource's row in every
    /// indexed dataset of its resource type.
    async fn build_codings(
        &self,
        ctx: &SessionContext,
        catalogue: &pb::Catalogue,
        codings: &str,
    ) -> Option<Arc<CodingIndex>> {
        let started = std::time::Instant::now();
        let text = |a: ArrayRef| cast(&a, &DataType::Utf8).ok();
        // Read without keeping: the codings' own columns are not needed once sorted.
        let mut read = self.load(ctx, codings, &["element", "system", "code", RESOURCE]).await?.into_iter();
        let mut next = || read.next().and_then(text);
        let (element, system, code, resource) = (next()?, next()?, next()?, next()?);
        let (element, system, code, resource) = (
            element.as_string::<i32>(),
            system.as_string::<i32>(),
            code.as_string::<i32>(),
            resource.as_string::<i32>(),
        );

        let mut found: Vec<(u32, Target)> = Vec::new();
        let mut datasets = Vec::new();
        for d in &catalogue.datasets {
            let Some(types) = resource_types(&d.model) else { continue };
            let prefixes: Vec<String> = types.iter().map(|t| format!("{t}/")).collect();
            let own = self.load(ctx, &d.name, &[RESOURCE]).await.and_then(|mut c| c.pop()).and_then(text);
            let Some(own) = own else { continue };
            let own = own.as_string::<i32>();
            let mut rows: HashMap<&str, u32, ahash::RandomState> =
                HashMap::with_capacity_and_hasher(own.len(), Default::default());
            for (row, r) in own.iter().enumerate() {
                if let Some(r) = r {
                    rows.insert(r, row as u32);
                }
            }
            let dataset = datasets.len() as u32;
            datasets.push(d.name.clone());
            for (i, r) in resource.iter().enumerate() {
                let Some(r) = r else { continue };
                if !prefixes.iter().any(|p| r.starts_with(p.as_str())) {
                    continue;
                }
                if let Some(&row) = rows.get(r) {
                    found.push((i as u32, Target { dataset, row }));
                }
            }
        }

        // Keys, sorted; then the targets by key.
        let mut ids: HashMap<(&str, &str, &str), u32, ahash::RandomState> = HashMap::default();
        let mut key_of = Vec::with_capacity(found.len());
        for &(i, _) in &found {
            let i = i as usize;
            if element.is_null(i) || system.is_null(i) || code.is_null(i) {
                key_of.push(u32::MAX);
                continue;
            }
            let key = (element.value(i), system.value(i), code.value(i));
            let next = ids.len() as u32;
            key_of.push(*ids.entry(key).or_insert(next));
        }
        let mut keys: Vec<((&str, &str, &str), u32)> = ids.into_iter().collect();
        keys.sort_unstable();
        let mut rank = vec![0u32; keys.len()];
        for (sorted, (_, id)) in keys.iter().enumerate() {
            rank[*id as usize] = sorted as u32;
        }
        let mut entries: Vec<(u32, Target)> = key_of
            .iter()
            .zip(&found)
            .filter(|(k, _)| **k != u32::MAX)
            .map(|(k, (_, t))| (rank[*k as usize], *t))
            .collect();
        entries.sort_unstable();
        let mut starts = Vec::with_capacity(keys.len() + 1);
        let mut at = 0usize;
        for k in 0..keys.len() as u32 {
            starts.push(at as u32);
            while entries.get(at).is_some_and(|(e, _)| *e == k) {
                at += 1;
            }
        }
        starts.push(at as u32);
        let index = CodingIndex {
            keys: keys.into_iter().map(|((e, s, c), _)| (e.into(), s.into(), c.into())).collect(),
            starts,
            targets: entries.into_iter().map(|(_, t)| t).collect(),
            datasets,
        };
        if !self.reserve(index.bytes()) {
            tracing::warn!(codings, "the criteria index is full; code criteria go the DataFusion route");
            return None;
        }
        tracing::info!(
            codings,
            codings_indexed = index.targets.len(),
            ms = started.elapsed().as_millis() as u64,
            "criteria index built"
        );
        Some(Arc::new(index))
    }
}

/// The rows of `batch` meeting `expr` (NULL is not met).
pub(crate) fn evaluate(ctx: &SessionContext, batch: &RecordBatch, expr: Expr) -> Option<BooleanArray> {
    let schema = DFSchema::try_from(batch.schema().as_ref().clone()).ok()?;
    let physical = ctx.create_physical_expr(expr, &schema).ok()?;
    let value = physical.evaluate(batch).ok()?.into_array(batch.num_rows()).ok()?;
    let mask = value.as_boolean_opt()?;
    Some(mask.iter().map(|v| Some(v == Some(true))).collect())
}

/// Columns of `dataset` at `rows` (all rows when `None`), as one batch.
pub(crate) async fn gather(
    index: &ClinicalIndex,
    ctx: &SessionContext,
    dataset: &str,
    schema: &SchemaRef,
    columns: &[String],
    rows: Option<&UInt32Array>,
) -> Option<RecordBatch> {
    let mut fields = Vec::with_capacity(columns.len());
    let mut arrays = Vec::with_capacity(columns.len());
    for c in columns {
        schema.field_with_name(c).ok()?;
        let array = index.column(ctx, dataset, c).await?;
        fields.push(Field::new(c, array.data_type().clone(), true));
        arrays.push(match rows {
            Some(rows) => take(&array, rows, None).ok()?,
            None => array,
        });
    }
    let len = rows.map(|r| r.len()).or_else(|| index.len(dataset))?;
    let options = datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(len));
    RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), arrays, &options).ok()
}
