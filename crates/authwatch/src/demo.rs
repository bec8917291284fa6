//! `authwatch demo`: the bundled sample (a small CloudWatch S3 export tree with a planted
//! attack among normal traffic) replayed with the bundled rules. Needs no AWS account.
//!
//! The sample is embedded in the binary and written to a temporary directory, so the demo
//! reads it exactly as `authwatch replay` reads a user's export.

use std::io;
use std::path::Path;

use crate::rule_files::DEMO_FILES;

/// Writes the embedded sample under `dir`; returns the export tree's root.
pub fn unpack(dir: &Path) -> io::Result<std::path::PathBuf> {
    let root = dir.join("eks-demo-export");
    for (rel, bytes) in DEMO_FILES {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, bytes)?;
    }
    if DEMO_FILES.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "this build has no demo sample (samples/demo was empty when it was built)",
        ));
    }
    Ok(root)
}
