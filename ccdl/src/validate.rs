//! Bounds and JSON Schema validation of a CCDL document.

use std::sync::OnceLock;

use serde_json::Value;

use crate::CcdlError;

/// Largest document accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Deepest nesting of arrays and objects accepted (a CCDL document needs about 12).
pub const MAX_DEPTH: usize = 32;

/// `version` values of documents written before the schema fixed it to "2" (the sq2cql test
/// queries): validated as version "2".
pub const LEGACY_VERSIONS: &[&str] = &[
    "http://to_be_decided.com/draft-1/schema#",
    "https://medizininformatik-initiative.de/fdpg/StructuredQuery/v3/schema",
];

static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();

fn validator() -> &'static jsonschema::Validator {
    VALIDATOR.get_or_init(|| {
        let schema: Value = serde_json::from_str(include_str!("../schema/ccdl-schema.json"))
            .expect("the embedded CCDL schema is JSON (checked by the crate's tests)");
        jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&schema)
            .expect("the embedded CCDL schema compiles (checked by the crate's tests)")
    })
}

/// The deepest nesting of `[` and `{` outside strings.
fn nesting_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Errors, and the document when it parsed.
pub type Failure = (Vec<CcdlError>, Option<Value>);

fn root_error(message: String) -> Failure {
    (vec![CcdlError { pointer: String::new(), message }], None)
}

/// Parses and validates a document; every schema error is reported with its pointer.
pub fn parse_and_validate(text: &str) -> Result<Value, Failure> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(root_error(format!(
            "the document has {} bytes; at most {MAX_DOCUMENT_BYTES} are accepted",
            text.len()
        )));
    }
    let depth = nesting_depth(text);
    if depth > MAX_DEPTH {
        return Err(root_error(format!("the document nests {depth} levels deep; at most {MAX_DEPTH} are accepted")));
    }
    let document: Value =
        serde_json::from_str(text).map_err(|e| root_error(format!("the document is not JSON: {e}")))?;
    let mut checked = document.clone();
    if let Some(version) = checked.get_mut("version")
        && version.as_str().is_some_and(|v| LEGACY_VERSIONS.contains(&v))
    {
        *version = Value::String("2".to_string());
    }
    let mut errors: Vec<CcdlError> = Vec::new();
    for error in validator().iter_errors(&checked) {
        let e = CcdlError { pointer: error.instance_path().as_str().to_string(), message: error.to_string() };
        if !errors.contains(&e) {
            errors.push(e);
        }
    }
    if errors.is_empty() { Ok(document) } else { Err((errors, Some(document))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_compiles_and_depth_counts() {
        let _ = validator();
        assert_eq!(nesting_depth(r#"{"a": [1, {"b": "[[[{"}]}"#), 3);
        assert_eq!(nesting_depth(r#""\"[""#), 0);
    }
}
