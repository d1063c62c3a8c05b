//! `kind = "dir"`: a directory of models. Each `*.gguf` file directly in
//! it is a model named after its stem (`llama-3-8b.Q4_K_M.gguf` →
//! `llama-3-8b.Q4_K_M`); each subdirectory holding `*.safetensors` files
//! (at any depth) is a model named after the subdirectory, made of every
//! file in it (configuration and tokenizer included, as `register_model`
//! of a directory records them).

use std::path::{Path, PathBuf};

use super::{Found, file_name, subdirs};
use crate::drivers::files::ModelFiles;

/// Every model of the directory `root`, and the problems met.
pub fn scan(root: &Path, max_files: usize) -> (Vec<Found>, Vec<String>) {
    let (mut found, mut problems) = (Vec::new(), Vec::new());
    let Ok(entries) = std::fs::read_dir(root) else {
        return (found, vec![format!("{}: cannot be read", root.display())]);
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf") && p.is_file())
        .collect();
    files.sort();
    for f in files {
        let name = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        match ModelFiles::of_files(&f, vec![PathBuf::from(file_name(&f))]) {
            Ok(files) => found.push(Found {
                name,
                files,
                components: Vec::new(),
                revision: None,
            }),
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    for sub in subdirs(root) {
        let name = file_name(&sub);
        if name.starts_with('.') {
            continue;
        }
        match ModelFiles::walk(&sub, max_files) {
            Ok(files) if files.files.iter().any(|f| f.rel.extension().is_some_and(|x| x == "safetensors")) => found.push(Found {
                name,
                files,
                components: Vec::new(),
                revision: None,
            }),
            Ok(_) => {}
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    (found, problems)
}

/// The directory itself and its subdirectories (shards written into one).
pub fn watch_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    out.extend(subdirs(root));
    out
}
