//! Reading what the operator points tagwarden at: configs, recordings, params files,
//! plugins, secrets.
//!
//! Only regular files are read: a device such as `/dev/zero` never ends and a named pipe
//! blocks until someone writes to it. Never more than a stated limit is read, so a wrong
//! path cannot exhaust memory; the error says which file, its size, the limit, and how to
//! raise it where a real input can be that large. Text must be UTF-8, and an error says
//! where it is not. Parse errors from serde are reworded without Rust type names
//! ([`plain_expectations`]).

use std::io::Read;
use std::path::Path;

use anyhow::bail;
use serde::Deserialize;

/// Size limits, each with its reason.
pub mod limits {
    /// A config file: hand-written TOML, a few KiB even with many policies.
    pub const CONFIG_BYTES: u64 = 4 << 20;
    /// A `--params @file`: a JSON object of a plugin's settings.
    pub const PARAMS_BYTES: u64 = 1 << 20;
    /// A password file: one line.
    pub const SECRET_BYTES: u64 = 64 << 10;
    /// A plugin component. The bundled ones are under 2 MiB; a plugin with a large
    /// embedded table could be much larger, but not this large.
    pub const PLUGIN_BYTES: u64 = 256 << 20;
    /// A recording, unless `TAGWARDEN_MAX_RECORDING_MIB` says otherwise: about 250 bytes
    /// per tag, so 1 GiB holds some 4 million tags; a repository of 1 million is real.
    pub const RECORDING_MIB: u64 = 1024;
    /// The environment variable that raises (or lowers) the recording limit, in MiB.
    pub const RECORDING_MIB_ENV: &str = "TAGWARDEN_MAX_RECORDING_MIB";
}

/// Reads the regular file at `path`, at most `max_bytes` of it. `what` names the file in
/// errors ("config", "recording"); `raise` says how to raise the limit, or is empty.
pub fn read_bytes(path: &Path, what: &str, max_bytes: u64, raise: &str) -> anyhow::Result<Vec<u8>> {
    let shown = path.display();
    let (file, size) = open_regular(path, what, max_bytes, raise)?;
    let mut data = Vec::with_capacity(size as usize);
    // `take`: the file may grow while it is read.
    file.take(max_bytes + 1).read_to_end(&mut data).map_err(|e| anyhow::anyhow!("cannot read {what} {shown}: {e}"))?;
    if data.len() as u64 > max_bytes {
        return Err(too_large(what, path, "still growing".to_owned(), max_bytes, raise));
    }
    Ok(data)
}

/// Opens the regular file at `path` for reading, with [`read_bytes`]'s checks and errors
/// (special files refused, at most `max_bytes`), and returns it with its size: for readers
/// that need only the start of a large file.
pub fn open_regular(path: &Path, what: &str, max_bytes: u64, raise: &str) -> anyhow::Result<(std::fs::File, u64)> {
    let shown = path.display();
    // Checked before opening: opening a named pipe for reading blocks until a writer comes.
    let meta = std::fs::metadata(path).map_err(|e| anyhow::anyhow!("cannot read {what} {shown}: {e}"))?;
    refuse_special(&meta, what, path)?;
    let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("cannot read {what} {shown}: {e}"))?;
    // And again on what was opened, in case the path changed in between.
    let meta = file.metadata().map_err(|e| anyhow::anyhow!("cannot read {what} {shown}: {e}"))?;
    refuse_special(&meta, what, path)?;
    if meta.len() > max_bytes {
        return Err(too_large(what, path, bytes(meta.len()), max_bytes, raise));
    }
    Ok((file, meta.len()))
}

fn too_large(what: &str, path: &Path, size: String, max_bytes: u64, raise: &str) -> anyhow::Error {
    let raise = if raise.is_empty() { String::new() } else { format!("; {raise}") };
    anyhow::anyhow!("{what} {} is {size}, more than the limit of {}{raise}", path.display(), bytes(max_bytes))
}

/// [`read_bytes`], then UTF-8 with the position of the first invalid byte.
pub fn read_text(path: &Path, what: &str, max_bytes: u64, raise: &str) -> anyhow::Result<String> {
    let data = read_bytes(path, what, max_bytes, raise)?;
    utf8(data).map_err(|e| anyhow::anyhow!("{what} {} is not UTF-8 text: {e}", path.display()))
}

/// `data` as a string, or where it stops being UTF-8: `invalid byte 0xff at line 3, column 7`.
pub fn utf8(data: Vec<u8>) -> Result<String, String> {
    String::from_utf8(data).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let byte = e.as_bytes()[valid.len()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        // Columns count characters, as editors do; the prefix is valid UTF-8.
        let column = String::from_utf8_lossy(&valid[line_start..]).chars().count() + 1;
        format!("invalid byte 0x{byte:02x} at line {line}, column {column} (byte offset {})", valid.len())
    })
}

fn refuse_special(meta: &std::fs::Metadata, what: &str, path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let kind = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a named pipe"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    bail!("{what} {} is {kind}; expected a regular file", path.display())
}

/// `n` bytes, in the largest binary unit that divides it, for limits in messages.
pub fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// The recording size limit: `TAGWARDEN_MAX_RECORDING_MIB`, else [`limits::RECORDING_MIB`].
pub fn recording_limit() -> anyhow::Result<u64> {
    match std::env::var(limits::RECORDING_MIB_ENV) {
        Err(_) => Ok(limits::RECORDING_MIB << 20),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(mib) if (1..=1 << 20).contains(&mib) => Ok(mib << 20),
            _ => bail!("{} is `{v}`; expected a whole number of MiB from 1 to 1048576", limits::RECORDING_MIB_ENV),
        },
    }
}

/// Rewords serde's expectations without Rust type names: `expected usize` becomes
/// `expected a non-negative integer (at most 18446744073709551615)`, `expected struct Tag`
/// becomes `expected <map>` (`a table` in TOML, `an object` in JSON).
pub fn plain_expectations(message: &str, map: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("expected ") {
        let (before, after) = rest.split_at(at + "expected ".len());
        out.push_str(before);
        let word_end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        let (word, tail) = after.split_at(word_end);
        let plain = match word {
            "usize" | "u64" => Some(format!("a non-negative integer (at most {})", u64::MAX)),
            "u32" => Some(format!("a non-negative integer (at most {})", u32::MAX)),
            "u16" => Some(format!("a non-negative integer (at most {})", u16::MAX)),
            "u8" => Some(format!("a non-negative integer (at most {})", u8::MAX)),
            "i64" | "isize" => Some("an integer".to_owned()),
            "i32" => Some(format!("an integer from {} to {}", i32::MIN, i32::MAX)),
            "f64" | "f32" => Some("a number".to_owned()),
            _ => None,
        };
        match plain {
            Some(p) => {
                out.push_str(&p);
                rest = tail;
            }
            None if word == "struct" || word == "map" => {
                out.push_str(map);
                // `struct Name`: drop the Rust name too.
                let tail = if word == "struct" {
                    tail.trim_start().trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '_')
                } else {
                    tail
                };
                rest = tail;
            }
            None if word == "a" && tail.starts_with(" sequence") => {
                out.push_str("an array");
                rest = &tail[" sequence".len()..];
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    out
}

/// Parses JSON text like `serde_json::from_str::<Value>`, but refuses an object that
/// gives a key twice, at any depth: serde_json would keep the last value silently, and
/// `{"keep_n": 1, "keep_n": 1000}` would mean something else than it says.
pub fn json_without_duplicate_keys(text: &str) -> Result<serde_json::Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = StrictValue::deserialize(&mut de)?.0;
    de.end()?;
    Ok(value)
}

struct StrictValue(serde_json::Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, serde_json::Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(serde_json::Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("the key {key:?} is given twice")));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(serde_json::Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_files_are_refused_before_reading() {
        let err = read_bytes(Path::new("/dev/zero"), "recording", 1 << 20, "").unwrap_err().to_string();
        assert_eq!(err, "recording /dev/zero is a character device; expected a regular file");
        let dir = tempfile::tempdir().unwrap();
        let err = read_bytes(dir.path(), "config", 1 << 20, "").unwrap_err().to_string();
        assert!(err.ends_with("is a directory; expected a regular file"), "{err}");
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        // Would block forever if opened.
        let err = read_bytes(&fifo, "plugin", 1 << 20, "").unwrap_err().to_string();
        assert!(err.ends_with("is a named pipe; expected a regular file"), "{err}");
        let err = read_bytes(&dir.path().join("missing"), "config", 1 << 20, "").unwrap_err().to_string();
        assert!(err.starts_with("cannot read config ") && err.contains("No such file"), "{err}");
    }

    #[test]
    fn sizes_are_bounded_with_the_limit_and_how_to_raise_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("big.json");
        std::fs::write(&f, vec![b' '; 2048]).unwrap();
        assert_eq!(read_bytes(&f, "recording", 2048, "").unwrap().len(), 2048);
        let err = read_bytes(&f, "recording", 1024, "set X=MiB").unwrap_err().to_string();
        assert!(err.ends_with("is 2 KiB, more than the limit of 1 KiB; set X=MiB"), "{err}");
    }

    #[test]
    fn utf8_errors_give_line_column_and_offset() {
        assert_eq!(utf8(b"ok".to_vec()).unwrap(), "ok");
        assert_eq!(utf8(b"{\n  \"a\": \"\xc3\xa9\xff\"".to_vec()).unwrap_err(), "invalid byte 0xff at line 2, column 10 (byte offset 12)");
    }

    #[test]
    fn duplicate_json_keys_are_refused_at_any_depth() {
        assert_eq!(json_without_duplicate_keys(r#"{"a": [1, {"b": null}], "c": 1.5}"#).unwrap()["c"], 1.5);
        let err = json_without_duplicate_keys(r#"{"keep_n":1,"keep_n":1000}"#).unwrap_err().to_string();
        assert!(err.starts_with(r#"the key "keep_n" is given twice at line 1"#), "{err}");
        assert!(json_without_duplicate_keys(r#"{"a": {"b": 1, "b": 2}}"#).is_err());
        assert!(json_without_duplicate_keys(r#"{} {}"#).unwrap_err().to_string().contains("trailing characters"));
    }

    #[test]
    fn rust_type_names_become_plain_words() {
        let m = "invalid value: integer `-1`, expected usize";
        assert_eq!(
            plain_expectations(m, "a table"),
            "invalid value: integer `-1`, expected a non-negative integer (at most 18446744073709551615)"
        );
        assert_eq!(
            plain_expectations("invalid type: string \"x\", expected struct Tag", "an object"),
            "invalid type: string \"x\", expected an object"
        );
        assert_eq!(plain_expectations("invalid type: map, expected a sequence", "an object"), "invalid type: map, expected an array");
        assert_eq!(plain_expectations("expected u32 or f64", "x"), "expected a non-negative integer (at most 4294967295) or f64");
        assert_eq!(plain_expectations("expected a string", "x"), "expected a string");
    }
}
