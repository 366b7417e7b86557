//! Secret references: `env:NAME`, `file:PATH` (systemd `LoadCredential=` lands secrets in
//! `$CREDENTIALS_DIRECTORY`, which a path may name as `${CREDENTIALS_DIRECTORY}`), or a literal.

use std::path::Path;

/// A secret as configured: raw bytes; never printed.
#[derive(Clone)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

pub enum Source {
    Env,
    File,
    Literal,
}

/// Resolves one reference. A reference that resolves to nothing is an error, never "no secret".
pub fn resolve(reference: &str, base_dir: &Path) -> Result<(Secret, Source), String> {
    if let Some(name) = reference.strip_prefix("env:") {
        let value = std::env::var(name).map_err(|_| {
            format!("secret `env:{name}`: environment variable {name} is not set (export it, or use EnvironmentFile= / LoadCredential= in the unit)")
        })?;
        if value.is_empty() {
            return Err(format!(
                "secret `env:{name}`: environment variable {name} is empty"
            ));
        }
        return Ok((Secret(value.into_bytes()), Source::Env));
    }
    if let Some(path) = reference.strip_prefix("file:") {
        let expanded = expand_vars(path)?;
        let full = base_dir.join(&expanded);
        let mut bytes =
            super::diagnostics::read_capped(&full, super::diagnostics::MAX_SECRET_FILE, "a secret")
                .map_err(|e| format!("secret `file:{path}`: {e}"))?;
        while matches!(bytes.last(), Some(b'\n' | b'\r')) {
            bytes.pop();
        }
        if bytes.is_empty() {
            return Err(format!("secret `file:{path}`: {} is empty", full.display()));
        }
        return Ok((Secret(bytes), Source::File));
    }
    if reference.is_empty() {
        return Err(
            "secret is an empty string: write env:NAME, file:PATH or the secret itself".into(),
        );
    }
    Ok((Secret(reference.as_bytes().to_vec()), Source::Literal))
}

/// `${NAME}` in a path becomes the variable's value.
pub fn expand_vars(path: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in {path}"))?;
        let name = &rest[start + 2..start + end];
        let value = std::env::var(name)
            .map_err(|_| format!("path {path} names ${{{name}}}, which is not set"))?;
        out.push_str(&value);
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_env_and_file_references_resolve() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s"), "from-file\n").unwrap();
        std::env::set_var("PORTCULLIS_TEST_SECRET", "from-env");
        std::env::set_var("PORTCULLIS_TEST_DIR", dir.path());
        let get = |r: &str| resolve(r, dir.path()).map(|(s, _)| s.0);
        assert_eq!(get("plain").unwrap(), b"plain");
        assert_eq!(get("env:PORTCULLIS_TEST_SECRET").unwrap(), b"from-env");
        assert_eq!(get("file:s").unwrap(), b"from-file");
        assert_eq!(get("file:${PORTCULLIS_TEST_DIR}/s").unwrap(), b"from-file");
    }

    #[test]
    fn file_secrets_must_be_small_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![b'k'; 64 * 1024 + 1]).unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = |r: &str| match resolve(r, dir.path()) {
            Ok(_) => panic!("{r} resolved"),
            Err(e) => e,
        };
        assert!(
            err("file:big").contains("larger than 64 KiB"),
            "{}",
            err("file:big")
        );
        assert!(
            err("file:fifo").contains("is a FIFO"),
            "{}",
            err("file:fifo")
        );
        assert!(err("file:/dev/zero").contains("is a device"));
        assert!(err("file:/").contains("is a directory"));
    }

    #[test]
    fn references_that_resolve_to_nothing_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        for bad in [
            "env:PORTCULLIS_SURELY_UNSET",
            "file:missing",
            "file:empty",
            "",
            "file:${PORTCULLIS_SURELY_UNSET}/x",
        ] {
            assert!(resolve(bad, dir.path()).is_err(), "{bad}");
        }
    }
}
