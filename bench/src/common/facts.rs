//! Made-up machine facts, as an agent would report them (built-in ones and
//! a few custom keys, then installed packages up to a size), for the
//! facts scenario's registry entries and simulated agents. Deterministic:
//! machine `i` is the same in every run, so that how many machines a `-F`
//! filter selects is known without asking the server ([`selected`],
//! [`expected`]).

use pantry_shared::facts::Facts;
use serde_json::{json, Value};

/// The filter of issue 25: `-F os.id=debian -F 'memory_mib>=16384'`.
pub const TWO_EXPRESSIONS: [&str; 2] = ["os.id=debian", "memory_mib>=16384"];

/// Memory sizes, drawn evenly: a third of the machines have 16 GiB or more.
const MEMORY_MIB: [u64; 6] = [8192, 8192, 8192, 8192, 16384, 32768];
const CPUS: [u64; 4] = [2, 4, 8, 16];
/// Packages a machine lists first, then `pkg-NNN` as many as its size asks.
const PACKAGES: [&str; 40] = [
    "adduser",
    "apt",
    "base-files",
    "bash",
    "bsdutils",
    "ca-certificates",
    "coreutils",
    "cron",
    "curl",
    "dash",
    "dbus",
    "debconf",
    "diffutils",
    "dpkg",
    "e2fsprogs",
    "findutils",
    "gpgv",
    "grep",
    "gzip",
    "hostname",
    "init-system-helpers",
    "iproute2",
    "iputils-ping",
    "less",
    "libc6",
    "libssl3",
    "login",
    "logrotate",
    "mawk",
    "mount",
    "ncurses-base",
    "openssh-server",
    "passwd",
    "perl-base",
    "procps",
    "rsyslog",
    "sed",
    "systemd",
    "tar",
    "tzdata",
];

/// A splitmix64 step of `i`: machine `i`'s draws.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What machine `i` is, as far as the filters go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traits {
    /// Debian (nine in ten), otherwise Ubuntu.
    pub debian: bool,
    pub memory_mib: u64,
    pub cpus: u64,
    draw: u64,
}

pub fn traits(i: usize) -> Traits {
    let draw = mix(i as u64);
    Traits {
        debian: draw % 10 != 0,
        memory_mib: MEMORY_MIB[((draw >> 8) % MEMORY_MIB.len() as u64) as usize],
        cpus: CPUS[((draw >> 16) % CPUS.len() as u64) as usize],
        draw,
    }
}

/// Whether [`TWO_EXPRESSIONS`] select machine `i`.
pub fn selected(i: usize) -> bool {
    let t = traits(i);
    t.debian && t.memory_mib >= 16384
}

/// How many of machines `0..n` [`TWO_EXPRESSIONS`] select (about 30%).
pub fn expected(n: usize) -> usize {
    (0..n).filter(|&i| selected(i)).count()
}

/// The first machine from `from` on that [`TWO_EXPRESSIONS`] select, below
/// `n`.
pub fn first_selected(from: usize, n: usize) -> Option<usize> {
    (from..n).find(|&i| selected(i)).or_else(|| (0..from.min(n)).find(|&i| selected(i)))
}

/// The hostname of registry entry `i` (also its identity).
pub fn hostname(i: usize) -> String {
    format!("host-{i:07}")
}

/// Machine `i`'s facts, named `hostname`, with packages until their JSON
/// (as sent) is at least `bytes` long.
pub fn machine(i: usize, hostname: &str, bytes: usize) -> Facts {
    let t = traits(i);
    let d = t.draw;
    let (id, version, name, codename) = match (t.debian, (d >> 24) % 2) {
        (true, 0) => ("debian", "12", "Debian GNU/Linux", "bookworm"),
        (true, _) => ("debian", "11", "Debian GNU/Linux", "bullseye"),
        (false, 0) => ("ubuntu", "24.04", "Ubuntu", "noble"),
        (false, _) => ("ubuntu", "22.04", "Ubuntu", "jammy"),
    };
    let octet = |shift: u32| (d >> shift) % 250 + 1;
    let mut facts = Facts::new();
    let mut put = |key: &str, value: Value| {
        facts.insert(key.to_owned(), value);
    };
    put("os.id", json!(id));
    put("os.version_id", json!(version));
    put("os.name", json!(name));
    put("os.version_codename", json!(codename));
    put("os.pretty_name", json!(format!("{name} {version} ({codename})")));
    put("kernel.name", json!("Linux"));
    put("kernel.release", json!(format!("6.1.0-{}-amd64", 10 + (d >> 28) % 20)));
    put("arch", json!("x86_64"));
    put("memory_mib", json!(t.memory_mib));
    put("swap_mib", json!(t.memory_mib / 4));
    put("cpus", json!(t.cpus));
    put("cpu.model", json!(if (d >> 32) % 2 == 0 { "Intel(R) Xeon(R) Gold 6230R" } else { "AMD EPYC 7543" }));
    put("virtual", json!("kvm"));
    put("hostname", json!(hostname));
    put("fqdn", json!(format!("{hostname}.example.net")));
    put("ipv4", json!([format!("10.{}.{}.{}", octet(36), octet(44), octet(52)), "172.17.0.1"]));
    put("ipv6", json!([format!("fd00::{:x}", d & 0xffff)]));
    put("datacenter", json!(format!("dc{}", 1 + (d >> 40) % 4)));
    put("rack", json!(format!("r{:02}", (d >> 44) % 40)));
    put("app.tier", json!(1 + (d >> 50) % 3));
    put("owner.team", json!(["web", "data", "infra", "payments"][((d >> 54) % 4) as usize]));
    // The JSON grows by each entry's `"key":"value",` exactly (no escapes).
    let mut size = pantry_shared::facts::size(&facts);
    let mut k = 0usize;
    while size < bytes {
        let name = PACKAGES.get(k).map_or_else(|| format!("pkg-{k:03}"), |p| (*p).to_owned());
        let key = format!("packages.{name}");
        let version = format!("{}.{}.{}-{}", 1 + (k % 7), (d >> (k % 60)) % 20, k % 13, 1 + k % 4);
        size += key.len() + version.len() + 6;
        facts.insert(key, json!(version));
        k += 1;
    }
    facts
}

#[cfg(test)]
mod tests {
    use super::*;
    use pantry_shared::facts::FactFilter;

    fn filter(exprs: &[String]) -> FactFilter {
        FactFilter::parse(exprs).unwrap().unwrap()
    }

    #[test]
    fn the_expected_count_is_what_the_filter_selects() {
        let two: Vec<String> = TWO_EXPRESSIONS.iter().map(|s| s.to_string()).collect();
        let f = filter(&two);
        let n = 3000;
        let selected_by_filter = (0..n).filter(|&i| f.matches(&machine(i, &hostname(i), 1024))).count();
        assert_eq!(expected(n), selected_by_filter);
        let share = expected(n) as f64 / n as f64;
        assert!((0.25..0.35).contains(&share), "about 30% selected: {share}");
        let debian = (0..n).filter(|&i| traits(i).debian).count() as f64 / n as f64;
        assert!((0.87..0.93).contains(&debian), "nine in ten are Debian: {debian}");
        // Adding the hostname of a selected machine selects it alone.
        let one = first_selected(42, n).unwrap();
        assert!(one >= 42 && selected(one));
        let mut three = two.clone();
        three.push(format!("hostname={}", hostname(one)));
        let f = filter(&three);
        assert_eq!((0..n).filter(|&i| f.matches(&machine(i, &hostname(i), 1024))).collect::<Vec<_>>(), [one]);
        assert_eq!(first_selected(n, n), first_selected(0, n), "wraps");
    }

    #[test]
    fn machines_are_deterministic_and_of_the_size_asked() {
        for (i, bytes) in [(0, 1024), (7, 4096), (99_999, 1024), (5, 0)] {
            let m = machine(i, &hostname(i), bytes);
            assert_eq!(m, machine(i, &hostname(i), bytes));
            let size = pantry_shared::facts::size(&m);
            assert!(size >= bytes && size < bytes.max(700) + 64, "{i}: {size} bytes for {bytes}");
            assert!(m.keys().all(|k| pantry_shared::facts::valid_key(k)));
        }
        assert_ne!(machine(1, "a", 1024), machine(2, "a", 1024));
    }
}
