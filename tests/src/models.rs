//! Data for model fits across sites, and the pooled reference fit computed by another route
//! than the network's: least squares by a QR decomposition of the design matrix X itself (the
//! network sums X'X and solves by Cholesky), and IRLS as R's `glm.fit` runs it, by a QR of
//! √W·X in each iteration (the network sums X'WX).

use datafusion::arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use nalgebra::{DMatrix, DVector};
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Normal, Poisson};
use std::sync::Arc;
use verbund_node::Catalogue;

/// The dataset every model test uses, one row per patient.
pub const DATASET: &str = "cohort";
pub const SEXES: [&str; 2] = ["female", "male"];
pub const REGIONS: [&str; 3] = ["north", "south", "west"];

/// One patient's row.
#[derive(Debug, Clone)]
pub struct Patient {
    pub id: String,
    pub age: Option<f64>,
    pub bmi: Option<f64>,
    pub sex: Option<&'static str>,
    pub region: Option<&'static str>,
    /// A numeric outcome (linear model).
    pub y: Option<f64>,
    /// 0/1 (logistic model).
    pub event: f64,
    /// A count (Poisson model).
    pub visits: f64,
}

/// `n` patients of site `site`, from a fixed seed: outcomes follow known models in age, bmi,
/// sex and region; about 3 % of ages, bmis and sexes are missing.
pub fn patients(site: &str, n: usize, seed: u64) -> Vec<Patient> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let noise = Normal::new(0.0, 2.0).unwrap_or_else(|_| unreachable!());
    let bmi_dist = Normal::new(27.0, 4.0).unwrap_or_else(|_| unreachable!());
    (0..n)
        .map(|i| {
            let age: f64 = rng.random_range(20.0..85.0);
            let bmi: f64 = bmi_dist.sample(&mut rng);
            let male = rng.random_bool(0.5);
            let region = rng.random_range(0..3usize);
            let r = [0.0, 0.4, -0.3][region];
            let m = f64::from(u8::from(male));
            let y = 2.0 + 0.05 * age + 0.3 * bmi + 1.0 * m + r + noise.sample(&mut rng);
            let eta = -4.0 + 0.04 * age + 0.06 * bmi + 0.5 * m + r;
            let event = f64::from(u8::from(rng.random_bool(1.0 / (1.0 + (-eta).exp()))));
            let rate = (-1.0 + 0.02 * age + 0.02 * bmi + 0.3 * m + 0.5 * r).exp();
            let visits = Poisson::new(rate).map(|p| p.sample(&mut rng)).unwrap_or(0.0);
            let missing = |rng: &mut rand_chacha::ChaCha8Rng| rng.random_bool(0.03);
            Patient {
                id: format!("{site}-{i:05}"),
                age: (!missing(&mut rng)).then_some(age.round()),
                bmi: (!missing(&mut rng)).then_some((bmi * 10.0).round() / 10.0),
                sex: (!missing(&mut rng)).then_some(SEXES[usize::from(male)]),
                region: Some(REGIONS[region]),
                y: Some(y),
                event,
                visits,
            }
        })
        .collect()
}

/// The columns of [`DATASET`] besides its patient key.
const COLUMNS: [&str; 7] = ["age", "bmi", "sex", "region", "y", "event", "visits"];

/// The patients as a site's in-memory dataset [`DATASET`], keyed by `patient_id`.
pub fn catalogue(patients: &[Patient]) -> Catalogue {
    crate::memory_catalogue(DATASET, vec![batch(patients)], &COLUMNS)
}

/// The patients as one record batch.
pub fn batch(patients: &[Patient]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("patient_id", DataType::Utf8, false),
        Field::new("age", DataType::Float64, true),
        Field::new("bmi", DataType::Float64, true),
        Field::new("sex", DataType::Utf8, true),
        Field::new("region", DataType::Utf8, true),
        Field::new("y", DataType::Float64, true),
        Field::new("event", DataType::Float64, false),
        Field::new("visits", DataType::Float64, false),
    ]));
    let f = |get: fn(&Patient) -> Option<f64>| -> ArrayRef {
        Arc::new(Float64Array::from(patients.iter().map(get).collect::<Vec<_>>()))
    };
    let s = |get: fn(&Patient) -> Option<&'static str>| -> ArrayRef {
        Arc::new(StringArray::from(patients.iter().map(get).collect::<Vec<_>>()))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(patients.iter().map(|p| p.id.clone()).collect::<Vec<_>>())),
        f(|p| p.age),
        f(|p| p.bmi),
        s(|p| p.sex),
        s(|p| p.region),
        f(|p| p.y),
        f(|p| Some(p.event)),
        f(|p| Some(p.visits)),
    ];
    RecordBatch::try_new(schema, columns).unwrap_or_else(|e| panic!("model test data: {e}"))
}

/// The pooled design of `outcome ~ age + bmi + sex + region` over complete cases, as R's
/// `model.matrix` builds it (intercept, numeric columns, then dummies against the first level).
pub fn design(patients: &[Patient], outcome: fn(&Patient) -> Option<f64>) -> (DMatrix<f64>, DVector<f64>, usize) {
    let complete: Vec<&Patient> = patients
        .iter()
        .filter(|p| p.age.is_some() && p.bmi.is_some() && p.sex.is_some() && p.region.is_some() && outcome(p).is_some())
        .collect();
    let n = complete.len();
    let mut x = DMatrix::zeros(n, 6);
    let mut y = DVector::zeros(n);
    for (i, p) in complete.iter().enumerate() {
        let row = [
            1.0,
            p.age.unwrap_or_default(),
            p.bmi.unwrap_or_default(),
            f64::from(u8::from(p.sex == Some("male"))),
            f64::from(u8::from(p.region == Some("south"))),
            f64::from(u8::from(p.region == Some("west"))),
        ];
        for (j, v) in row.into_iter().enumerate() {
            x[(i, j)] = v;
        }
        y[i] = outcome(p).unwrap_or_default();
    }
    (x, y, patients.len() - n)
}

/// The design columns' names, as R's `model.matrix` gives them.
pub fn names() -> Vec<String> {
    ["(Intercept)", "age", "bmi", "sexmale", "regionsouth", "regionwest"].map(String::from).to_vec()
}

/// Coefficients and standard errors of a reference fit.
pub struct Reference {
    pub beta: Vec<f64>,
    pub se: Vec<f64>,
    pub deviance: f64,
}

/// (R'R)⁻¹ from the R of a QR decomposition.
fn unscaled_covariance(qr_r: &DMatrix<f64>) -> DMatrix<f64> {
    let r_inv = qr_r.clone().try_inverse().unwrap_or_else(|| panic!("singular reference design"));
    &r_inv * r_inv.transpose()
}

/// Ordinary least squares by the QR decomposition of X.
pub fn ols(x: &DMatrix<f64>, y: &DVector<f64>) -> Reference {
    let (n, p) = x.shape();
    let qr = x.clone().qr();
    let qty = qr.q().transpose() * y;
    let r = qr.r();
    let beta = r.clone().solve_upper_triangular(&qty).unwrap_or_else(|| panic!("singular reference design"));
    let residuals = y - x * &beta;
    let rss = residuals.dot(&residuals);
    let sigma2 = rss / (n - p) as f64;
    let cov = unscaled_covariance(&r) * sigma2;
    Reference { beta: beta.iter().copied().collect(), se: (0..p).map(|j| cov[(j, j)].sqrt()).collect(), deviance: rss }
}

/// A canonical-link GLM as R's `glm.fit` runs it: start at R's `mustart`, then weighted least
/// squares by a QR of √W·X until |Δdeviance| / (|deviance| + 0.1) < 1e-8; the covariance is
/// that of the last solve.
pub fn glm(x: &DMatrix<f64>, y: &DVector<f64>, binomial: bool) -> Reference {
    let (n, p) = x.shape();
    let deviance = |mu: &DVector<f64>| -> f64 {
        (0..n)
            .map(|i| {
                let (yi, mi) = (y[i], mu[i]);
                let ylog = |a: f64, b: f64| if a > 0.0 { a * (a / b).ln() } else { 0.0 };
                if binomial {
                    2.0 * (ylog(yi, mi) + ylog(1.0 - yi, 1.0 - mi))
                } else {
                    2.0 * (ylog(yi, mi) - (yi - mi))
                }
            })
            .sum()
    };
    let inverse_link = |eta: f64| if binomial { 1.0 / (1.0 + (-eta).exp()) } else { eta.exp() };
    let mut mu: DVector<f64> = y.map(|v| if binomial { (v + 0.5) / 2.0 } else { v + 0.1 });
    let mut eta: DVector<f64> = mu.map(|m| if binomial { (m / (1.0 - m)).ln() } else { m.ln() });
    let mut dev_old = deviance(&mu);
    for _ in 0..25 {
        // Canonical link: dμ/dη = Var(μ) = W.
        let w: DVector<f64> = mu.map(|m| if binomial { m * (1.0 - m) } else { m });
        let z: DVector<f64> = DVector::from_fn(n, |i, _| eta[i] + (y[i] - mu[i]) / w[i]);
        let sw = w.map(f64::sqrt);
        let xw = DMatrix::from_fn(n, p, |i, j| x[(i, j)] * sw[i]);
        let zw = z.component_mul(&sw);
        let qr = xw.qr();
        let r = qr.r();
        let beta = r.clone().solve_upper_triangular(&(qr.q().transpose() * zw)).unwrap_or_else(|| panic!("singular"));
        eta = x * &beta;
        mu = eta.map(inverse_link);
        let dev = deviance(&mu);
        let converged = (dev - dev_old).abs() / (dev.abs() + 0.1) < 1e-8;
        dev_old = dev;
        if converged {
            let cov = unscaled_covariance(&r);
            return Reference {
                beta: beta.iter().copied().collect(),
                se: (0..p).map(|j| cov[(j, j)].sqrt()).collect(),
                deviance: dev,
            };
        }
    }
    panic!("the reference IRLS did not converge")
}

/// Asserts `got` equals `want` to `rel` relative (absolute near zero), naming `what`.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (j, (g, w)) in got.iter().zip(want).enumerate() {
        let scale = w.abs().max(1e-300);
        assert!(((g - w) / scale).abs() <= rel || (g - w).abs() <= rel * 1e-3, "{what}[{j}]: {g} vs {w}");
    }
}

/// The patients as a dataset whose scan waits `delay` before its rows come: a site that is
/// slow to build a model's design.
pub fn slow_catalogue(patients: &[Patient], delay: std::time::Duration) -> Catalogue {
    use datafusion::catalog::streaming::StreamingTable;
    use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
    use datafusion::physical_plan::streaming::PartitionStream;

    #[derive(Debug)]
    struct Slow(RecordBatch, std::time::Duration);
    impl PartitionStream for Slow {
        fn schema(&self) -> &datafusion::arrow::datatypes::SchemaRef {
            self.0.schema_ref()
        }
        fn execute(
            &self,
            _ctx: Arc<datafusion::execution::TaskContext>,
        ) -> datafusion::execution::SendableRecordBatchStream {
            let (batch, delay) = (self.0.clone(), self.1);
            let stream = futures::stream::once(async move {
                tokio::time::sleep(delay).await;
                Ok(batch)
            });
            Box::pin(RecordBatchStreamAdapter::new(self.0.schema(), stream))
        }
    }
    let batch = batch(patients);
    let table = StreamingTable::try_new(batch.schema(), vec![Arc::new(Slow(batch, delay))])
        .unwrap_or_else(|e| panic!("slow table: {e}"));
    let mut slow = Catalogue::new();
    let columns: Vec<String> = COLUMNS.iter().map(|c| c.to_string()).collect();
    slow.add_table(DATASET, Arc::new(table), "patient_id", &columns).unwrap_or_else(|e| panic!("slow table: {e}"));
    slow
}
