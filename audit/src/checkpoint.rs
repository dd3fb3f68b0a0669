//! Signed checkpoints: the site's signature over "the chain had hash H at seq N".
//!
//! One JSON line each in `checkpoints.jsonl`:
//! `{"seq":N,"hash":"<hex>","time_ms":T,"key_id":"<hex>","signature":"<hex>"}`. The signed
//! message is `"verbund-audit checkpoint v1\n" ‖ seq (u64 BE) ‖ hash (32 bytes) ‖ time_ms
//! (u64 BE)`. A chain of SHA-256 hashes alone can be recomputed by whoever rewrites the log;
//! a signature cannot, so anyone holding the public key can check the log up to a
//! checkpoint, and a checkpoint beyond the log's end shows that its tail was cut off.

use crate::chain::Hash;
use crate::keys::{PublicKey, SigningKey};
use crate::segment::{LineReader, Read1};
use crate::{AuditError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

const CONTEXT: &[u8] = b"verbund-audit checkpoint v1\n";

/// A signed statement that the entry with sequence number `seq` has hash `hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: Hash,
    pub time_ms: u64,
    /// [`PublicKey::key_id`] of the key that signed it.
    pub key_id: String,
    pub signature: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointLine {
    seq: u64,
    hash: String,
    time_ms: u64,
    key_id: String,
    signature: String,
}

impl Checkpoint {
    pub fn sign(key: &SigningKey, seq: u64, hash: Hash, time_ms: u64) -> Result<Checkpoint> {
        let signature = key.sign(&message(seq, &hash, time_ms))?;
        Ok(Checkpoint { seq, hash, time_ms, key_id: key.public_key().key_id(), signature })
    }

    /// Whether `key` made this signature over this checkpoint's seq, hash and time.
    pub fn verify(&self, key: &PublicKey) -> bool {
        key.verify(&message(self.seq, &self.hash, self.time_ms), &self.signature)
    }

    /// The line for `checkpoints.jsonl`, with its newline.
    pub fn to_line(&self) -> Vec<u8> {
        let line = CheckpointLine {
            seq: self.seq,
            hash: self.hash.to_hex(),
            time_ms: self.time_ms,
            key_id: self.key_id.clone(),
            signature: hex::encode(&self.signature),
        };
        // A struct of numbers and strings always serializes.
        let mut out = serde_json::to_vec(&line).unwrap_or_default();
        out.push(b'\n');
        out
    }

    pub fn parse(line: &[u8]) -> Result<Checkpoint, String> {
        let line: CheckpointLine =
            serde_json::from_slice(line).map_err(|e| format!("it is not a checkpoint line: {e}"))?;
        let hash = Hash::from_hex(&line.hash).ok_or("its hash is not 64 lower-case hex digits")?;
        let signature = hex::decode(&line.signature).map_err(|_| "its signature is not hex")?;
        Ok(Checkpoint { seq: line.seq, hash, time_ms: line.time_ms, key_id: line.key_id, signature })
    }
}

fn message(seq: u64, hash: &Hash, time_ms: u64) -> Vec<u8> {
    let mut message = CONTEXT.to_vec();
    message.extend_from_slice(&seq.to_be_bytes());
    message.extend_from_slice(&hash.0);
    message.extend_from_slice(&time_ms.to_be_bytes());
    message
}

/// A line of the checkpoints file that is not a checkpoint.
#[derive(Debug, Clone)]
pub(crate) struct BadLine {
    pub line: u64,
    pub offset: u64,
    pub what: String,
    /// No well-formed checkpoint follows it: it may be a torn last write.
    pub at_tail: bool,
    /// It ends without a newline.
    pub incomplete: bool,
}

/// The checkpoints file as read: the good lines up to the first bad one.
#[derive(Debug, Default)]
pub(crate) struct CheckpointFile {
    /// (line number, checkpoint), in file order.
    pub entries: Vec<(u64, Checkpoint)>,
    pub bad: Option<BadLine>,
    pub len: u64,
}

impl CheckpointFile {
    pub fn read(path: &Path) -> Result<CheckpointFile> {
        let mut file = CheckpointFile::default();
        let mut reader = match LineReader::open(path) {
            Ok(reader) => reader,
            Err(AuditError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => return Ok(file),
            Err(e) => return Err(e),
        };
        let mut buf = Vec::new();
        loop {
            let read = reader.next_line(&mut buf)?;
            let what = match read {
                Read1::End => break,
                Read1::Line => match Checkpoint::parse(&buf) {
                    Ok(checkpoint) if file.bad.is_none() => {
                        file.entries.push((reader.line, checkpoint));
                        continue;
                    }
                    Ok(_) => {
                        // A good checkpoint after a bad line: the bad one is not a torn tail.
                        if let Some(bad) = &mut file.bad {
                            bad.at_tail = false;
                        }
                        break;
                    }
                    Err(what) => what,
                },
                Read1::Incomplete => "it ends without a newline (a torn write)".to_string(),
                Read1::TooLong => {
                    // Not a torn write, and nothing after it can be read line by line.
                    let bad = BadLine {
                        line: reader.line,
                        offset: reader.start,
                        what: String::new(),
                        at_tail: false,
                        incomplete: false,
                    };
                    let bad = file.bad.get_or_insert(bad);
                    bad.at_tail = false;
                    if bad.what.is_empty() {
                        bad.what = "it is far longer than a checkpoint".into();
                    }
                    break;
                }
            };
            if file.bad.is_none() {
                let incomplete = read == Read1::Incomplete;
                file.bad = Some(BadLine { line: reader.line, offset: reader.start, what, at_tail: true, incomplete });
            }
        }
        file.len = reader.end.max(file.bad.as_ref().map_or(0, |b| b.offset));
        Ok(file)
    }

    /// Offset after the last good line.
    pub fn good_end(&self) -> u64 {
        self.bad.as_ref().map_or(self.len, |b| b.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_only_unaltered_and_with_its_key() {
        let (key, _) = SigningKey::generate_in_memory().unwrap();
        let (other, _) = SigningKey::generate_in_memory().unwrap();
        let checkpoint = Checkpoint::sign(&key, 10, Hash([7; 32]), 1_700_000_000_000).unwrap();
        let line = checkpoint.to_line();
        let back = Checkpoint::parse(&line[..line.len() - 1]).unwrap();
        assert_eq!(back, checkpoint);
        assert!(back.verify(&key.public_key()));
        assert!(!back.verify(&other.public_key()));
        for altered in [
            Checkpoint { seq: 11, ..back.clone() },
            Checkpoint { hash: Hash([8; 32]), ..back.clone() },
            Checkpoint { time_ms: 1, ..back.clone() },
        ] {
            assert!(!altered.verify(&key.public_key()), "{altered:?}");
        }
    }
}
