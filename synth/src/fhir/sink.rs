//! Where resources go: one NDJSON file per resource type (plain or gzip), or transaction
//! Bundles that keep a patient's resources together.

use super::emit::Sink;
use super::resources::Reference;
use super::*;

pub(super) enum Out {
    Plain(BufWriter<File>),
    Gzip(Box<BufWriter<flate2::write::GzEncoder<File>>>),
}

impl Out {
    pub(super) fn create(path: &Path, gzip: bool) -> Result<Out> {
        let file = File::create(path).map_err(|error| Error::Io { path: path.to_path_buf(), error })?;
        Ok(if gzip {
            Out::Gzip(Box::new(BufWriter::with_capacity(
                1 << 16,
                flate2::write::GzEncoder::new(file, flate2::Compression::fast()),
            )))
        } else {
            Out::Plain(BufWriter::with_capacity(1 << 16, file))
        })
    }

    pub(super) fn finish(self, path: &Path) -> Result<()> {
        let io = |error| Error::Io { path: path.to_path_buf(), error };
        match self {
            Out::Plain(mut w) => w.flush().map_err(io),
            Out::Gzip(w) => {
                let encoder = (*w).into_inner().map_err(|e| io(e.into_error()))?;
                encoder.finish().map_err(io)?;
                Ok(())
            }
        }
    }
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Out::Plain(w) => w.write(buf),
            Out::Gzip(w) => w.write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Out::Plain(w) => w.write_all(buf),
            Out::Gzip(w) => w.write_all(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Out::Plain(w) => w.flush(),
            Out::Gzip(w) => w.flush(),
        }
    }
}

pub(super) fn encode_error(path: &Path, error: serde_json::Error) -> Error {
    match error.io_error_kind() {
        Some(_) => Error::Io { path: path.to_path_buf(), error: error.into() },
        None => Error::Encode { path: path.to_path_buf(), error: Box::new(error) },
    }
}

pub(super) struct NdjsonSink {
    pub(super) dir: PathBuf,
    pub(super) gzip: bool,
    pub(super) outs: Vec<Option<(PathBuf, Out)>>,
    pub(super) resources: usize,
}

impl NdjsonSink {
    pub(super) fn new(dir: PathBuf, gzip: bool) -> NdjsonSink {
        NdjsonSink { dir, gzip, outs: RESOURCE_TYPES.iter().map(|_| None).collect(), resources: 0 }
    }

    pub(super) fn finish(self) -> Result<(Vec<PathBuf>, usize)> {
        let mut files = Vec::new();
        for (path, out) in self.outs.into_iter().flatten() {
            out.finish(&path)?;
            files.push(path);
        }
        Ok((files, self.resources))
    }
}

impl Sink for NdjsonSink {
    fn begin_patient(&mut self, _resources: usize) -> Result<()> {
        Ok(())
    }

    fn reference(&self, resource_type: &str, id: &str) -> Reference {
        Reference { reference: format!("{resource_type}/{id}") }
    }

    fn put<R: Serialize>(&mut self, resource_type: &'static str, _id: &str, resource: &R) -> Result<()> {
        let slot = RESOURCE_TYPES.iter().position(|t| *t == resource_type).unwrap_or(0);
        if self.outs[slot].is_none() {
            let ext = if self.gzip { "ndjson.gz" } else { "ndjson" };
            let path = self.dir.join(format!("{resource_type}.{ext}"));
            let out = Out::create(&path, self.gzip)?;
            self.outs[slot] = Some((path, out));
        }
        if let Some((path, out)) = self.outs[slot].as_mut() {
            serde_json::to_writer(&mut *out, resource).map_err(|e| encode_error(path, e))?;
            out.write_all(b"\n").map_err(|error| Error::Io { path: path.clone(), error })?;
        }
        self.resources += 1;
        Ok(())
    }
}

pub(super) struct BundleSink {
    pub(super) dir: PathBuf,
    pub(super) files: Vec<PathBuf>,
    pub(super) current: Option<(PathBuf, BufWriter<File>)>,
    pub(super) entries: usize,
    pub(super) resources: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Entry<'a, R> {
    pub(super) full_url: String,
    pub(super) resource: &'a R,
    pub(super) request: Request,
}

#[derive(Serialize)]
pub(super) struct Request {
    pub(super) method: &'static str,
    pub(super) url: String,
}

impl BundleSink {
    pub(super) fn new(dir: PathBuf) -> BundleSink {
        BundleSink { dir, files: Vec::new(), current: None, entries: 0, resources: 0 }
    }

    pub(super) fn close(&mut self) -> Result<()> {
        if let Some((path, mut w)) = self.current.take() {
            w.write_all(b"]}\n").and_then(|()| w.flush()).map_err(|error| Error::Io { path: path.clone(), error })?;
            self.files.push(path);
        }
        self.entries = 0;
        Ok(())
    }

    pub(super) fn finish(mut self) -> Result<(Vec<PathBuf>, usize)> {
        self.close()?;
        Ok((self.files, self.resources))
    }
}

impl Sink for BundleSink {
    fn begin_patient(&mut self, resources: usize) -> Result<()> {
        if self.current.is_some() && self.entries + resources > MAX_BUNDLE_ENTRIES {
            self.close()?;
        }
        if self.current.is_none() {
            let path = self.dir.join(format!("bundle-{:04}.json", self.files.len() + 1));
            let file = File::create(&path).map_err(|error| Error::Io { path: path.clone(), error })?;
            let mut w = BufWriter::with_capacity(1 << 16, file);
            w.write_all(br#"{"resourceType":"Bundle","type":"transaction","entry":["#)
                .map_err(|error| Error::Io { path: path.clone(), error })?;
            self.current = Some((path, w));
        }
        Ok(())
    }

    /// Every reference points within the patient's own resources, which share a Bundle.
    fn reference(&self, resource_type: &str, id: &str) -> Reference {
        Reference { reference: format!("urn:uuid:{}", resource_uuid(resource_type, id)) }
    }

    fn put<R: Serialize>(&mut self, resource_type: &'static str, id: &str, resource: &R) -> Result<()> {
        let Some((path, w)) = self.current.as_mut() else {
            return Err(Error::Encode { path: self.dir.clone(), error: "no open bundle".into() });
        };
        if self.entries > 0 {
            w.write_all(b",").map_err(|error| Error::Io { path: path.clone(), error })?;
        }
        let entry = Entry {
            full_url: format!("urn:uuid:{}", resource_uuid(resource_type, id)),
            resource,
            request: Request { method: "PUT", url: format!("{resource_type}/{id}") },
        };
        serde_json::to_writer(&mut *w, &entry).map_err(|e| encode_error(path, e))?;
        self.entries += 1;
        self.resources += 1;
        Ok(())
    }
}
