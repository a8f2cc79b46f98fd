//! Mount options (`-o`), parsed into settings. See the module doc of `fs` for the list.

use std::time::Duration;

/// Default attribute and entry cache time of the kernel.
pub const DEFAULT_ATTR_TIMEOUT: Duration = Duration::from_secs(1);
/// Default time an operation may keep trying replicas before it fails with EIO.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default FUSE subtype: the kernel shows the mount's type as `fuse.chordfs`.
pub const DEFAULT_SUBTYPE: &str = "chordfs";

#[derive(Clone, Debug, PartialEq)]
pub struct MountOptions {
    pub ring: Option<String>,
    /// File holding the cluster secret (`secret_file=PATH`).
    pub secret_file: Option<std::path::PathBuf>,
    pub chunk_bytes: Option<u32>,
    pub cache_bytes: Option<u64>,
    pub timeout: Duration,
    pub allow_other: bool,
    pub attr_timeout: Duration,
    pub read_only: bool,
    pub dev: bool,
    pub suid: bool,
    pub exec: bool,
    /// The FUSE subtype the kernel shows after `fuse.` (`subtype=NAME`); `None`
    /// (`nosubtype`) shows the type as plain `fuse`.
    pub subtype: Option<String>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            ring: None,
            secret_file: None,
            chunk_bytes: None,
            cache_bytes: None,
            timeout: DEFAULT_OP_TIMEOUT,
            allow_other: is_root(),
            attr_timeout: DEFAULT_ATTR_TIMEOUT,
            read_only: false,
            dev: false,
            suid: false,
            exec: true,
            subtype: Some(DEFAULT_SUBTYPE.to_string()),
        }
    }
}

fn is_root() -> bool {
    crate::client::files::current_ids().0 == 0
}

/// A byte count: digits with an optional K, M, G or T suffix (powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    let t = t.strip_suffix('i').unwrap_or(t);
    let (digits, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("bad size {s:?}")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = digits.parse().map_err(|_| format!("bad size {s:?}"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} too large"))
}

/// Seconds, possibly fractional.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("bad number of seconds {s:?}"))?;
    if !(0.0..=86_400.0).contains(&v) {
        return Err(format!("seconds {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// A FUSE subtype: a short name of letters, digits, `-`, `_` and `.`, as the kernel
/// shows it in /proc/mounts (where a space or a comma would break the line's fields).
fn parse_subtype(s: &str) -> Result<String, String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if s.is_empty() || s.len() > 32 || !s.chars().all(ok) {
        return Err(format!(
            "bad subtype {s:?}: 1 to 32 letters, digits, '-', '_' or '.' (nosubtype for none)"
        ));
    }
    Ok(s.to_string())
}

/// Options that mount(8) passes or fstab may hold and that need nothing from us.
const IGNORED: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "async",
    "sync",
    "dirsync",
    "default_permissions",
    "loud",
    "silent",
];

/// Parses `-o` arguments: each a comma-separated list; later values win.
pub fn parse(list: &[String]) -> Result<MountOptions, String> {
    let mut o = MountOptions::default();
    for opt in list
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let need = || value.ok_or_else(|| format!("option {key} needs a value"));
        match key {
            "ring" => o.ring = Some(need()?.to_string()),
            "secret_file" => o.secret_file = Some(need()?.into()),
            "chunk_size" => {
                let n = parse_bytes(need()?)?;
                let max = crate::proto::CHUNK_MAX_BYTES as u64;
                if n == 0 || n > max {
                    return Err(format!("chunk_size must be between 1 and {max}"));
                }
                o.chunk_bytes = Some(n as u32);
            }
            "cache_size" => o.cache_bytes = Some(parse_bytes(need()?)?),
            "timeout" => {
                o.timeout = parse_seconds(need()?)?;
                if o.timeout.is_zero() {
                    return Err("timeout must be above 0".into());
                }
            }
            "attr_timeout" => o.attr_timeout = parse_seconds(need()?)?,
            "allow_other" => o.allow_other = true,
            "noallow_other" => o.allow_other = false,
            "ro" => o.read_only = true,
            "rw" => o.read_only = false,
            "dev" => o.dev = true,
            "nodev" => o.dev = false,
            "suid" => o.suid = true,
            "nosuid" => o.suid = false,
            "exec" => o.exec = true,
            "noexec" => o.exec = false,
            "subtype" => o.subtype = Some(parse_subtype(need()?)?),
            "nosubtype" => o.subtype = None,
            k if IGNORED.contains(&k) || k.starts_with("x-") || k.starts_with("comment") => {}
            _ => return Err(format!("unknown mount option {opt:?}")),
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_suffixes() {
        assert_eq!(parse_bytes("65536").unwrap(), 65536);
        assert_eq!(parse_bytes("64K").unwrap(), 65536);
        assert_eq!(parse_bytes("2MiB").unwrap(), 2 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert!(parse_bytes("x").is_err());
    }

    #[test]
    fn options_parse_and_reject_unknown() {
        let o = parse(&[
            "rw,chunk_size=64K,timeout=2.5".into(),
            "ro,_netdev,ring=h:1".into(),
        ])
        .unwrap();
        assert_eq!(o.chunk_bytes, Some(65536));
        assert_eq!(o.timeout, Duration::from_millis(2500));
        assert!(o.read_only);
        assert_eq!(o.ring.as_deref(), Some("h:1"));
        assert!(parse(&["bogus".into()]).is_err());
        assert!(parse(&["chunk_size=0".into()]).is_err());
    }

    #[test]
    fn subtype_defaults_to_chordfs_and_can_be_left_out() {
        assert_eq!(parse(&[]).unwrap().subtype.as_deref(), Some("chordfs"));
        assert_eq!(parse(&["nosubtype".into()]).unwrap().subtype, None);
        let o = parse(&["nosubtype,subtype=ring-2".into()]).unwrap();
        assert_eq!(o.subtype.as_deref(), Some("ring-2"));
        assert!(parse(&["subtype=".into()]).is_err());
        assert!(parse(&["subtype=a b".into()]).is_err());
        assert!(parse(&["subtype".into()]).is_err());
    }
}
