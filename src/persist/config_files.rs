//! Reads config files for `core::config`, which validates them without I/O: a TOML file, or
//! every `*.toml` file of a directory (sorted by name), with the paths made absolute.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use crate::core::config::{Config, ConfigError, ConfigErrors};

/// Reads and validates the config at `path` (a file or a directory).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let err = |message: String| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message,
        }])
    };
    let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let (files, base_dir) = if meta.is_dir() {
        let mut files = Vec::new();
        let entries = std::fs::read_dir(path).map_err(|e| err(format!("cannot read: {e}")))?;
        for entry in entries.flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|x| x == "toml") && p.is_file() {
                files.push(p);
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(err("directory holds no *.toml file".into()));
        }
        (files, path.to_path_buf())
    } else {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        (vec![path.to_path_buf()], dir)
    };
    let mut sources = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: f.clone(),
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("cannot read: {e}"),
            }])
        })?;
        sources.push((f, text));
    }
    Config::from_sources(
        &absolute(path),
        &absolute(&base_dir),
        &sources,
        &lookup_listen,
    )
}

/// A listen address given as `name:port`: the system's lookup (`/etc/hosts`, then DNS), its
/// first address. A listener binds once, at start, so this happens once too. Backend names
/// are not looked up here (see `runtime::dns`).
fn lookup_listen(s: &str) -> Result<SocketAddr, String> {
    match s.to_socket_addrs() {
        Ok(mut found) => found
            .next()
            .ok_or_else(|| format!("`{s}` resolves to no address")),
        Err(e) => Err(format!("`{s}` cannot be resolved: {e}")),
    }
}

/// `p` against the working directory, symlinks resolved where possible.
pub fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_path_buf();
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    let joined = cwd.join(p);
    joined.canonicalize().unwrap_or(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
    [listen]
    http = "127.0.0.1:8080"
    
    [[route]]
    host = "Example.com"
    service = "web"
    
    [service.web]
    blue = ["127.0.0.1:3001"]
    green = ["127.0.0.1:3002"]
    "#;

    #[test]
    fn shipped_route_files_pass() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("routes");
        for f in ["demo.toml", "example.toml"] {
            let c = load(&dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert!(!c.routes.is_empty());
        }
        let example = load(&dir.join("example.toml")).unwrap();
        let by_host = |h: &str| {
            example
                .routes
                .iter()
                .find(|r| r.host == h)
                .map(|r| r.service.as_str())
        };
        assert_eq!(by_host("example.com"), Some("frontend"));
        assert_eq!(by_host("api.example.com"), Some("api"));
        assert_eq!(by_host("monitoring.example.com"), Some("grafana"));
        assert!(!example.service("grafana").unwrap().releasable());
    }

    #[test]
    fn directory_merge_refuses_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), BASE).unwrap();
        std::fs::write(
            dir.path().join("b.toml"),
            "[service.web]\nbackends = [\"127.0.0.1:1\"]\n",
        )
        .unwrap();
        let e = load(dir.path()).unwrap_err().0;
        assert_eq!(e.len(), 1);
        assert!(e[0].file.ends_with("b.toml"));
        assert!(e[0].message.contains("already defined at"), "{}", e[0]);
        assert_eq!(e[0].line, 1);
    }

    #[test]
    fn directory_merge_combines_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), BASE).unwrap();
        std::fs::write(
            dir.path().join("b.toml"),
            "[[route]]\nhost = \"grafana.example.com\"\nservice = \"grafana\"\n[service.grafana]\nbackends = [\"127.0.0.1:3000\"]\n",
        )
        .unwrap();
        let c = load(dir.path()).unwrap();
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.services.len(), 2);
        assert_eq!(
            c.state_dir,
            dir.path().canonicalize().unwrap().join("state")
        );
    }
}
