//! The agent's facts: what this machine is ([`builtin`]: its OS, kernel,
//! CPUs, memory, names, addresses, boot time) and what its operators say
//! it is ([`custom`]: the files of its facts directory). This module only
//! gathers them; the agent loop decides when (for example when [`stamp`]
//! of the directory changes, or every so often, since a fact script's
//! output may change while its file does not).
//!
//! A custom facts file is, by its name:
//!
//! - `*.json`: an object (JSON);
//! - `*.yaml`, `*.yml`: an object (YAML);
//! - anything else that is executable: a program, run with no arguments,
//!   stdin from `/dev/null`, in the facts directory and in a process
//!   group of its own; it must print one object (JSON, or else YAML) on
//!   stdout and exit 0 within [`SCRIPT_TIMEOUT`], or its whole group is
//!   killed;
//! - anything else (a `README`): ignored. So are hidden files and the
//!   leftovers of editors and package managers (`.x.json.swp`, `x.sh~`,
//!   `x.yml.dpkg-old`, `x.json.rpmnew`...), so that a backup copy of a
//!   script is never run.
//!
//! A file that cannot be used (it does not parse, holds no object, is over
//! [`MAX_FACTS_BYTES`], its program fails or hangs) is left out whole,
//! with a warning line naming it and why.

use std::ffi::{CStr, CString};
use std::fs;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use pantry_shared::facts::{drop_invalid_keys, flatten_into, Facts, MAX_FACTS_BYTES};
use serde_json::{Map, Value};

/// How long a fact program may run before its process group is killed.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this much of a failing fact program's stderr is kept (its first
/// line goes in the warning).
const STDERR_CAP: usize = 4 * 1024;

// ---------------------------------------------------------------------------
// Built-in facts

/// The built-in facts of this machine: `os.id`, `os.version_id`, `kernel`,
/// `arch`, `cpus`, `memory_mib`, `hostname`, `fqdn`, `ipv4`, `ipv6`,
/// `boot_time`, `machine_id`, `agent_version`. One that cannot be read is
/// absent (`os.*`, `kernel`, `memory_mib`, `boot_time`, `machine_id`).
///
/// `fqdn` asks the resolver (`getaddrinfo`), which may wait for DNS.
pub fn builtin() -> Facts {
    let mut facts = Facts::new();
    let mut put = |key: &str, value: Value| {
        facts.insert(key.to_owned(), value);
    };
    let os = os_release();
    for (field, key) in [("ID", "os.id"), ("VERSION_ID", "os.version_id")] {
        if let Some(v) = os.iter().find(|(k, _)| k == field).map(|(_, v)| v).filter(|v| !v.is_empty()) {
            put(key, Value::String(v.clone()));
        }
    }
    if let Some(release) = kernel_release() {
        put("kernel", release.into());
    }
    put("arch", std::env::consts::ARCH.into());
    put("cpus", std::thread::available_parallelism().map_or(1, |n| n.get()).into());
    if let Some(mib) = memory_mib() {
        put("memory_mib", mib.into());
    }
    let hostname = pantry_shared::config::hostname();
    put("fqdn", canonical_name(&hostname).unwrap_or_else(|| hostname.clone()).into());
    put("hostname", hostname.into());
    let (mut v4, mut v6): (Vec<Ipv4Addr>, Vec<Ipv6Addr>) = (Vec::new(), Vec::new());
    for addr in interface_addresses() {
        if addr.is_loopback() || addr.is_unspecified() {
            continue;
        }
        match addr {
            IpAddr::V4(a) => v4.push(a),
            IpAddr::V6(a) => v6.push(a),
        }
    }
    v4.sort();
    v4.dedup();
    v6.sort();
    v6.dedup();
    put("ipv4", v4.iter().map(|a| Value::String(a.to_string())).collect());
    put("ipv6", v6.iter().map(|a| Value::String(a.to_string())).collect());
    if let Some(boot) = boot_time() {
        put("boot_time", humantime::format_rfc3339_seconds(boot).to_string().into());
    }
    if let Some(id) = fs::read_to_string("/etc/machine-id").ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
    {
        put("machine_id", id.into());
    }
    put("agent_version", pantry_shared::VERSION.into());
    facts
}

/// The fields of os-release(5) (`/etc/os-release`, else
/// `/usr/lib/os-release`), values unquoted.
fn os_release() -> Vec<(String, String)> {
    let text = fs::read_to_string("/etc/os-release").or_else(|_| fs::read_to_string("/usr/lib/os-release"));
    text.map(|t| parse_os_release(&t)).unwrap_or_default()
}

fn parse_os_release(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let (key, value) = line.split_once('=')?;
            let value = value.trim();
            let unquoted = match value.as_bytes() {
                [q @ (b'"' | b'\''), .., last] if last == q && value.len() >= 2 => &value[1..value.len() - 1],
                _ => value,
            };
            // Shell escapes (`\"`, `\\`, `\$`, `` \` ``): the character itself.
            let mut out = String::with_capacity(unquoted.len());
            let mut chars = unquoted.chars();
            while let Some(c) = chars.next() {
                out.push(if c == '\\' { chars.next().unwrap_or('\\') } else { c });
            }
            Some((key.trim().to_owned(), out))
        })
        .collect()
}

/// The kernel's release (`uname -r`).
fn kernel_release() -> Option<String> {
    uname_release()
        .or_else(|| fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_owned()))
        .filter(|s| !s.is_empty())
}

fn uname_release() -> Option<String> {
    // SAFETY: `utsname` is arrays of C chars, for which all zeroes is a
    // valid value; uname(2) only writes into the struct we pass, and fills
    // each field with a NUL-terminated string (the arrays are read below
    // without going past their end either way).
    let mut names: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut names) } != 0 {
        return None;
    }
    let bytes: Vec<u8> = names.release.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// `MemTotal` of `/proc/meminfo`, in MiB.
fn memory_mib() -> Option<u64> {
    parse_meminfo_total(&fs::read_to_string("/proc/meminfo").ok()?)
}

fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().next()?.parse().ok()?;
    Some(kib / 1024)
}

/// When the machine booted: `btime` of `/proc/stat`.
fn boot_time() -> Option<SystemTime> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let secs: u64 = stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// The canonical name of `host` as the resolver knows it (`getaddrinfo`
/// with `AI_CANONNAME`), if it knows one.
fn canonical_name(host: &str) -> Option<String> {
    let c_host = CString::new(host).ok()?;
    // SAFETY: `addrinfo` is integers and pointers, for which all zeroes
    // (0 and null) is a valid value: hints with no family, protocol or
    // address, as getaddrinfo(3) asks.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_flags = libc::AI_CANONNAME;
    hints.ai_family = libc::AF_UNSPEC;
    hints.ai_socktype = libc::SOCK_STREAM;
    let mut list: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: `c_host` is NUL-terminated and outlives the call; a null
    // service is allowed; `hints` and `list` are valid for the call. On
    // success `list` is a list we own until freeaddrinfo.
    let rc = unsafe { libc::getaddrinfo(c_host.as_ptr(), std::ptr::null(), &hints, &mut list) };
    if rc != 0 || list.is_null() {
        return None;
    }
    // SAFETY: `list` is the non-null head getaddrinfo returned, not yet
    // freed; with AI_CANONNAME its first entry's `ai_canonname` is null or
    // a NUL-terminated string, copied here before the list is freed (once).
    let name = unsafe {
        let canon = (*list).ai_canonname;
        let name = (!canon.is_null()).then(|| CStr::from_ptr(canon).to_string_lossy().into_owned());
        libc::freeaddrinfo(list);
        name
    };
    name.filter(|n| !n.is_empty())
}

/// Every address of this machine's interfaces (`getifaddrs`), loopback
/// included.
fn interface_addresses() -> Vec<IpAddr> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is valid for the call; on success it is a list we own
    // until freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut node = head;
    while !node.is_null() {
        // SAFETY: `node` is an entry of the list getifaddrs returned, not
        // yet freed. Its `ifa_addr` is null or points at a socket address
        // whose `sa_family` says its real type: `sockaddr_in` for AF_INET,
        // `sockaddr_in6` for AF_INET6, both read only for that family.
        unsafe {
            let entry = &*node;
            let addr = entry.ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(addr as *const libc::sockaddr_in);
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            node = entry.ifa_next;
        }
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once;
    // nothing of the list is used after (the addresses were copied).
    unsafe { libc::freeifaddrs(head) };
    out
}

// ---------------------------------------------------------------------------
// Custom facts

/// The custom facts in `dir`, and one warning line per file left out (why).
///
/// The files are read in the order of their names, and a later file's key
/// replaces an earlier file's (`10-site.yaml`, then `20-host.json`). A
/// missing `dir` has no custom facts and no warning.
pub fn custom(dir: &Path) -> (Facts, Vec<String>) {
    custom_within(dir, SCRIPT_TIMEOUT)
}

/// [`custom`], its programs given `timeout` each.
fn custom_within(dir: &Path, timeout: Duration) -> (Facts, Vec<String>) {
    collect(dir, timeout, &Facts::new())
}

/// Built-in and custom facts together; custom keys that would replace a
/// built-in one are left out with a warning.
pub fn gather(dir: &Path) -> (Facts, Vec<String>) {
    let builtin = builtin();
    let (custom, warnings) = collect(dir, SCRIPT_TIMEOUT, &builtin);
    let mut facts = builtin;
    facts.extend(custom);
    (facts, warnings)
}

/// The custom facts of `dir` (programs given `timeout`), without the keys
/// of `reserved` (each file that has some warned about).
fn collect(dir: &Path, timeout: Duration, reserved: &Facts) -> (Facts, Vec<String>) {
    let mut facts = Facts::new();
    let mut warnings = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (facts, warnings),
        Err(e) => {
            warnings.push(one_line(&format!("facts directory {}: {e}", dir.display())));
            return (facts, warnings);
        }
    };
    let mut names: Vec<_> = entries.filter_map(Result::ok).map(|e| e.file_name()).collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let warn = |warnings: &mut Vec<String>, why: &str| {
            warnings.push(one_line(&format!("facts file {}: {why}", path.display())));
        };
        if is_leftover(&name.to_string_lossy()) {
            continue;
        }
        // Following symbolic links: a link to a facts file is one.
        let Ok(meta) = fs::metadata(&path) else { continue };
        if !meta.is_file() {
            continue;
        }
        let object = match Source::of(&path, meta.mode()) {
            None => continue,
            Some(source) => read_source(source, &path, dir, meta.len(), timeout),
        };
        let object = match object {
            Ok(object) => object,
            Err(why) => {
                warn(&mut warnings, &why);
                continue;
            }
        };
        let mut these = Facts::new();
        flatten_into("", &Value::Object(object), &mut these);
        let bad = drop_invalid_keys(&mut these);
        if !bad.is_empty() {
            let list: Vec<String> = bad.iter().map(|k| format!("{k:?}")).collect();
            warn(
                &mut warnings,
                &format!("left out keys that are not letters, digits, `_`, `.` and `-`: {}", list.join(", ")),
            );
        }
        let taken: Vec<String> = these.keys().filter(|k| reserved.contains_key(*k)).cloned().collect();
        if !taken.is_empty() {
            for k in &taken {
                these.remove(k);
            }
            warn(&mut warnings, &format!("left out built-in facts it would replace: {}", taken.join(", ")));
        }
        facts.extend(these);
    }
    (facts, warnings)
}

/// What a facts file is, by its name and mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Json,
    Yaml,
    Program,
}

impl Source {
    fn of(path: &Path, mode: u32) -> Option<Source> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Some(Source::Json),
            Some("yaml" | "yml") => Some(Source::Yaml),
            _ if mode & 0o111 != 0 => Some(Source::Program),
            _ => None,
        }
    }
}

/// Whether a file name is that of a hidden file or of an editor's or a
/// package manager's leftover, never read.
fn is_leftover(name: &str) -> bool {
    const SUFFIXES: [&str; 9] =
        ["~", ".swp", ".bak", ".dpkg-old", ".dpkg-new", ".dpkg-dist", ".dpkg-tmp", ".rpmnew", ".rpmsave"];
    name.starts_with('.') || SUFFIXES.iter().any(|s| name.ends_with(s)) || name.contains(".ucf-")
}

/// The object a facts file holds (or its program prints), or why not.
fn read_source(
    source: Source,
    path: &Path,
    dir: &Path,
    len: u64,
    timeout: Duration,
) -> Result<Map<String, Value>, String> {
    let too_big = || format!("over {} KiB", MAX_FACTS_BYTES / 1024);
    let data = |what: &str| -> Result<Vec<u8>, String> {
        if len > MAX_FACTS_BYTES as u64 {
            return Err(too_big());
        }
        let mut bytes = Vec::new();
        let file = fs::File::open(path).map_err(|e| format!("cannot read {what}: {e}"))?;
        file.take(MAX_FACTS_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read {what}: {e}"))?;
        if bytes.len() > MAX_FACTS_BYTES {
            return Err(too_big());
        }
        Ok(bytes)
    };
    match source {
        Source::Json => {
            let value: Value = serde_json::from_slice(&data("it")?).map_err(|e| format!("not JSON: {e}"))?;
            as_object(value, "holds")
        }
        Source::Yaml => as_object(yaml(&data("it")?)?, "holds"),
        Source::Program => {
            let out = run_program(path, dir, timeout)?;
            if out.iter().all(u8::is_ascii_whitespace) {
                return Err("printed nothing (an object was expected on stdout)".into());
            }
            let value = match serde_json::from_slice::<Value>(&out) {
                Ok(value) => value,
                Err(json) => yaml(&out).map_err(|_| format!("printed neither JSON ({json}) nor YAML"))?,
            };
            as_object(value, "printed")
        }
    }
}

/// YAML text as JSON.
fn yaml(bytes: &[u8]) -> Result<Value, String> {
    let value: serde_yaml::Value = serde_yaml::from_slice(bytes).map_err(|e| format!("not YAML: {e}"))?;
    serde_json::to_value(value).map_err(|e| format!("not representable as JSON: {e}"))
}

fn as_object(value: Value, verb: &str) -> Result<Map<String, Value>, String> {
    let kind = match value {
        Value::Object(map) => return Ok(map),
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
    };
    Err(format!("{verb} {kind}, not an object"))
}

/// What a fact program's pipes and end report.
enum Event {
    /// Stdout to its end, or `None`: over [`MAX_FACTS_BYTES`].
    Stdout(Option<Vec<u8>>),
    Stderr(Vec<u8>),
    Exited(io::Result<ExitStatus>),
}

/// Runs the fact program `path` in `dir`, in a process group of its own,
/// and returns its stdout, or why not: it failed, printed too much, or did
/// not end (and close its output) within `timeout`, when its whole group
/// is killed.
fn run_program(path: &Path, dir: &Path, timeout: Duration) -> Result<Vec<u8>, String> {
    // Absolute: a relative program path is ambiguous with `current_dir`.
    let program = std::path::absolute(path).map_err(|e| format!("cannot run: {e}"))?;
    let mut command = Command::new(&program);
    command.current_dir(dir).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let started = Instant::now();
    let mut child = spawn(&mut command).map_err(|e| format!("cannot run: {e}"))?;
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    if let Some(mut out) = child.stdout.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let _ = (&mut out).take(MAX_FACTS_BYTES as u64 + 1).read_to_end(&mut kept);
            let _ = tx.send(Event::Stdout((kept.len() <= MAX_FACTS_BYTES).then_some(kept)));
        });
    }
    if let Some(mut err) = child.stderr.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let _ = (&mut err).take(STDERR_CAP as u64).read_to_end(&mut kept);
            // The rest is read and dropped, so that the program never waits
            // on a full pipe.
            let _ = io::copy(&mut err, &mut io::sink());
            let _ = tx.send(Event::Stderr(kept));
        });
    }
    std::thread::spawn(move || {
        let _ = tx.send(Event::Exited(child.wait()));
    });
    let deadline = started + timeout;
    let (mut stdout, mut stderr, mut status) = (None, None, None);
    let mut over = false;
    while stdout.is_none() || stderr.is_none() || status.is_none() {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Stdout(Some(bytes))) => stdout = Some(bytes),
            Ok(Event::Stdout(None)) => {
                over = true;
                break;
            }
            Ok(Event::Stderr(bytes)) => stderr = Some(bytes),
            Ok(Event::Exited(result)) => status = Some(result),
            Err(_) => break,
        }
    }
    let limit = timeout.as_secs_f64();
    if over {
        kill_group(pid);
        return Err(format!("printed over {} KiB, killed", MAX_FACTS_BYTES / 1024));
    }
    let exited = status.is_some();
    let (Some(stdout), Some(_), Some(status)) = (stdout, &stderr, status) else {
        kill_group(pid);
        return Err(if exited {
            format!("killed after {limit} s (it exited, but a process it started still held its output open)")
        } else {
            format!("killed after {limit} s")
        });
    };
    let status = status.map_err(|e| format!("cannot wait for it: {e}"))?;
    if status.success() {
        return Ok(stdout);
    }
    let why = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => format!("failed ({status})"),
    };
    let first_line = stderr.as_deref().map(String::from_utf8_lossy).and_then(|text| {
        text.lines().map(str::trim).find(|l| !l.is_empty()).map(|l| l.chars().take(200).collect::<String>())
    });
    Err(match first_line {
        Some(line) => format!("{why}: {line}"),
        None => why,
    })
}

/// Starts `command`, trying again for a moment while its file is being
/// written (`ETXTBSY`: still open for writing, here or in a child another
/// thread is starting).
fn spawn(command: &mut Command) -> io::Result<Child> {
    let mut tries = 0;
    loop {
        match command.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 10 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

/// SIGKILL to the process group `group`.
fn kill_group(group: i32) {
    if group > 0 {
        // SAFETY: kill(2) has no memory effects; a negative pid signals
        // the group our child leads (a positive `group` is checked so that
        // this never becomes kill(-1) or kill(0)).
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
}

/// `text` on one line: control characters (a newline in a file name or an
/// error) become spaces.
fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

// ---------------------------------------------------------------------------
// Stamp

/// The stamp of a directory that does not exist (or cannot be read).
const MISSING_STAMP: u64 = 0;

/// A cheap fingerprint of `dir` (its entries' names, sizes, mtimes, modes,
/// and inodes and ctimes): it changes when a custom fact file is added,
/// removed or changed. A missing dir has a fixed stamp. It does not change
/// when what a fact program prints does.
pub fn stamp(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else { return MISSING_STAMP };
    let mut entries: Vec<(std::ffi::OsString, PathBuf)> =
        entries.filter_map(Result::ok).map(|e| (e.file_name(), e.path())).collect();
    entries.sort();
    let mut hash = Fnv::new();
    hash.add(b"pantry facts.d");
    for (name, path) in entries {
        hash.add(name.as_encoded_bytes());
        hash.add(&[0]);
        // Following links (as `custom` does); a dangling one by itself.
        match fs::metadata(&path).or_else(|_| fs::symlink_metadata(&path)) {
            Ok(m) => {
                let fields =
                    [m.len(), m.mtime() as u64, m.mtime_nsec() as u64, m.ctime() as u64, m.ctime_nsec() as u64];
                for n in fields.into_iter().chain([u64::from(m.mode()), m.ino()]) {
                    hash.add(&n.to_le_bytes());
                }
            }
            Err(_) => hash.add(b"?"),
        }
    }
    // Never the missing directory's stamp.
    hash.0.max(1)
}

/// FNV-1a, 64 bits: the same stamp for the same directory in every run.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) {
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn script(dir: &Path, name: &str, body: &str) {
        write(dir, name, &format!("#!/bin/sh\n{body}\n"), 0o755);
    }

    /// The warning about `name`, which must be the only one about it.
    fn warning<'a>(warnings: &'a [String], name: &str) -> &'a str {
        let about: Vec<&String> = warnings.iter().filter(|w| w.contains(&format!("/{name}: "))).collect();
        assert_eq!(about.len(), 1, "one warning about {name}: {warnings:#?}");
        about[0]
    }

    #[test]
    fn builtins_describe_this_machine() {
        let f = builtin();
        assert_eq!(f["cpus"], json!(std::thread::available_parallelism().unwrap().get()));
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap();
        let kib: u64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(f["memory_mib"], json!(kib / 1024));
        if let Ok(text) = fs::read_to_string("/etc/os-release") {
            if let Some(id) = text.lines().find_map(|l| l.strip_prefix("ID=")) {
                assert_eq!(f["os.id"], json!(id.trim_matches('"')));
            }
            if let Some(v) = text.lines().find_map(|l| l.strip_prefix("VERSION_ID=")) {
                assert_eq!(f["os.version_id"], json!(v.trim_matches('"')));
            }
        }
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert_eq!(f["kernel"], json!(release.trim()));
        assert_eq!(f["arch"], json!(std::env::consts::ARCH));
        assert_eq!(f["agent_version"], json!(pantry_shared::VERSION));
        assert_eq!(f["hostname"], json!(pantry_shared::config::hostname()));
        assert!(f["fqdn"].as_str().is_some_and(|n| !n.is_empty()), "{:?}", f["fqdn"]);
        let v4: Vec<&str> = f["ipv4"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(v4.iter().all(|a| !a.starts_with("127.") && a.parse::<Ipv4Addr>().is_ok()), "{v4:?}");
        let v6: Vec<Ipv6Addr> =
            f["ipv6"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().parse().unwrap()).collect();
        assert!(v6.iter().all(|a| !a.is_loopback()), "{v6:?}");
        assert!(v6.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates: {v6:?}");
        let boot = humantime::parse_rfc3339(f["boot_time"].as_str().unwrap()).unwrap();
        assert!(boot < SystemTime::now());
        if let Ok(id) = fs::read_to_string("/etc/machine-id") {
            assert_eq!(f["machine_id"], json!(id.trim()));
        }
        assert!(f.keys().all(|k| pantry_shared::facts::valid_key(k)), "{:?}", f.keys());
    }

    #[test]
    fn os_release_values_are_unquoted() {
        let fields =
            parse_os_release("# comment\nID=debian\nVERSION_ID=\"12\"\nNAME='Alpine Linux'\nX=\"a \\\"b\\\"\"\n");
        let get = |k: &str| fields.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!((get("ID"), get("VERSION_ID"), get("NAME")), (Some("debian"), Some("12"), Some("Alpine Linux")));
        assert_eq!(get("X"), Some("a \"b\""));
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\nMemTotal:       16384000 kB\n"), Some(16000));
    }

    #[test]
    fn json_yaml_and_programs_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "10-base.json", r#"{"role": "web", "rack": 4, "net": {"vlan": 12}}"#, 0o644);
        write(d, "20-app.yaml", "app:\n  tier: 2\n  name: shop\nrole: db\n", 0o644);
        write(d, "30-app.yml", "tags: [a, b]\n", 0o644);
        script(d, "40-script", r#"echo "{\"script\": {\"ok\": true}, \"cwd\": \"$(pwd -P)\"}""#);
        script(d, "50-yaml.sh", "echo 'from_yaml: true'");
        write(d, "README", "Put facts here.\n", 0o644);
        write(d, "60-notes.txt", "not: facts\n", 0o644);
        let (f, warnings) = custom(d);
        assert!(warnings.is_empty(), "{warnings:#?}");
        assert_eq!(f["role"], "db", "a later file replaces an earlier one's key");
        assert_eq!((&f["rack"], &f["net.vlan"]), (&json!(4), &json!(12)));
        assert_eq!((&f["app.tier"], &f["app.name"]), (&json!(2), &json!("shop")));
        assert_eq!(f["tags"], json!(["a", "b"]));
        assert_eq!(f["script.ok"], json!(true));
        assert_eq!(f["cwd"], json!(d.canonicalize().unwrap().to_str().unwrap()), "programs run in the directory");
        assert_eq!(f["from_yaml"], json!(true));
        assert_eq!(f.len(), 9, "{f:?}");
    }

    #[test]
    fn a_missing_directory_has_no_facts_and_no_warning() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("facts.d");
        assert_eq!(custom(&missing), (Facts::new(), Vec::new()));
        assert_eq!(stamp(&missing), stamp(&dir.path().join("other")));
        assert_ne!(stamp(&missing), stamp(dir.path()), "an empty directory is not a missing one");
    }

    #[test]
    fn broken_files_are_left_out_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "bad.json", "{\"a\": ", 0o644);
        write(d, "list.json", "[1, 2]", 0o644);
        write(d, "empty.yaml", "", 0o644);
        write(d, "bad.yml", "a: [\n", 0o644);
        write(d, "big.json", &format!("{{\"big\": \"{}\"}}", "x".repeat(MAX_FACTS_BYTES)), 0o644);
        write(d, "keys.json", r#"{"good": 1, "bad key!": 2, "also\nbad": 3}"#, 0o644);
        script(d, "fails.sh", "echo '{\"fails\": 1}'; echo 'boom: no database' >&2; exit 1");
        script(d, "garbage.sh", "echo 'hello there'");
        script(d, "silent.sh", "true");
        script(d, "chatty.sh", "yes '{}'");
        write(d, "noshebang.sh", "\x7fELF garbage", 0o755);
        write(d, "zz-good.json", r#"{"kept": true}"#, 0o644);
        let (f, warnings) = custom(d);
        assert_eq!(f, Facts::from([("good".into(), json!(1)), ("kept".into(), json!(true))]), "{warnings:#?}");
        assert!(warnings.iter().all(|w| !w.contains('\n') && w.starts_with("facts file ")), "{warnings:#?}");
        assert!(warning(&warnings, "bad.json").contains("not JSON"));
        assert!(warning(&warnings, "list.json").ends_with("holds a list, not an object"));
        assert!(warning(&warnings, "empty.yaml").ends_with("holds nothing, not an object"));
        assert!(warning(&warnings, "bad.yml").contains("not YAML"));
        assert!(warning(&warnings, "big.json").ends_with("over 64 KiB"));
        let keys = warning(&warnings, "keys.json");
        assert!(keys.contains("\"bad key!\"") && keys.contains(r#""also\nbad""#), "{keys}");
        assert!(warning(&warnings, "fails.sh").ends_with("exited with status 1: boom: no database"));
        assert!(warning(&warnings, "garbage.sh").ends_with("printed a string, not an object"));
        assert!(warning(&warnings, "silent.sh").contains("printed nothing"));
        assert!(warning(&warnings, "chatty.sh").ends_with("printed over 64 KiB, killed"));
        assert!(warning(&warnings, "noshebang.sh").contains("cannot run"));
        assert_eq!(warnings.len(), 11, "{warnings:#?}");
    }

    #[test]
    fn a_hanging_program_is_killed_and_the_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "a.json", r#"{"before": 1}"#, 0o644);
        script(d, "b-hangs.sh", "echo '{\"hung\": 1}'; exec sleep 37");
        script(d, "c-background.sh", "sleep 38 & echo '{\"background\": 1}'");
        script(d, "d-fine.sh", "echo '{\"after\": 1}'");
        let started = Instant::now();
        let (f, warnings) = custom_within(d, Duration::from_secs(1));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "took {took:?}");
        assert!(took >= Duration::from_secs(2), "both waited for their limit: {took:?}");
        assert_eq!(f, Facts::from([("before".into(), json!(1)), ("after".into(), json!(1))]));
        assert!(warning(&warnings, "b-hangs.sh").ends_with(": killed after 1 s"), "{warnings:#?}");
        assert!(warning(&warnings, "c-background.sh").contains("killed after 1 s (it exited"), "{warnings:#?}");
        assert_eq!(warnings.len(), 2);
        // The whole groups died.
        let left = || {
            let ps = Command::new("pgrep").args(["-f", "^sleep 3[78]$"]).output();
            ps.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
        };
        let until = Instant::now() + Duration::from_secs(2);
        while !left().is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(left(), "", "left running");
    }

    #[test]
    fn custom_keys_do_not_replace_builtins() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "site.json",
            r#"{"kernel": "mine", "os": {"id": "mine", "family": "unix"}, "site": "lab"}"#,
            0o644,
        );
        let (f, warnings) = gather(dir.path());
        assert_eq!(f["kernel"], builtin()["kernel"]);
        assert_eq!((&f["site"], &f["os.family"]), (&json!("lab"), &json!("unix")));
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
        assert!(warnings[0].contains("site.json: left out built-in facts it would replace: kernel"), "{warnings:#?}");
        if builtin().contains_key("os.id") {
            assert!(warnings[0].contains("os.id"));
            assert_ne!(f["os.id"], "mine");
        }
        // `custom` alone keeps them.
        assert_eq!(custom(dir.path()).0["kernel"], "mine");
    }

    #[test]
    fn hidden_and_leftover_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        script(d, "run.sh~", "echo '{\"backup\": 1}'");
        write(d, ".hidden.json", r#"{"hidden": 1}"#, 0o644);
        write(d, "x.json.dpkg-old", r#"{"old": 1}"#, 0o644);
        fs::create_dir(d.join("sub.json")).unwrap();
        assert_eq!(custom(d), (Facts::new(), Vec::new()));
    }

    #[test]
    fn the_stamp_follows_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let empty = stamp(d);
        write(d, "a.json", r#"{"a": 1}"#, 0o644);
        let one = stamp(d);
        assert_ne!(one, empty, "a file added");
        assert_eq!(stamp(d), one, "stable while nothing changes");
        write(d, "a.json", r#"{"a": 12}"#, 0o644);
        let rewritten = stamp(d);
        assert_ne!(rewritten, one, "a file changed");
        assert_eq!(stamp(d), rewritten);
        fs::set_permissions(d.join("a.json"), fs::Permissions::from_mode(0o755)).unwrap();
        assert_ne!(stamp(d), rewritten, "a mode changed");
        fs::remove_file(d.join("a.json")).unwrap();
        assert_eq!(stamp(d), empty, "a file removed");
    }
}
