//! The machine the figures come from, process memory from /proc, and small statistics.

use serde_json::{Value, json};
use std::time::Duration;

pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub os: String,
    pub kernel: String,
    pub rustc: String,
    pub commit: String,
}

fn first_line_with(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':').or_else(|| l.split_once('=')))
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Machine {
    pub fn detect() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let meminfo = read("/proc/meminfo");
        let mem_kib: f64 = first_line_with(&meminfo, "MemTotal")
            .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or(0.0);
        let commit = match command_output("git", &["rev-parse", "--short", "HEAD"]) {
            Some(c) => {
                let dirty = command_output("git", &["status", "--porcelain", "--untracked-files=no"])
                    .is_some_and(|s| !s.is_empty());
                if dirty { format!("{c} (with uncommitted changes)") } else { c }
            }
            None => "unknown".into(),
        };
        Self {
            cpu: first_line_with(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into()),
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            memory_gib: mem_kib / 1024.0 / 1024.0,
            os: first_line_with(&read("/etc/os-release"), "PRETTY_NAME").unwrap_or_else(|| std::env::consts::OS.into()),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            rustc: command_output("rustc", &["-V"]).unwrap_or_else(|| "unknown".into()),
            commit,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "cpu": self.cpu, "cores": self.cores, "memory_gib": round(self.memory_gib, 1),
            "os": self.os, "kernel": self.kernel, "rustc": self.rustc, "commit": self.commit,
        })
    }

    pub fn markdown(&self) -> String {
        format!(
            "| machine | |\n|---|---|\n| CPU | {} |\n| cores | {} |\n| memory | {:.1} GiB |\n| OS | {} (Linux {}) |\n| rustc | {} |\n| commit | {} |\n",
            self.cpu, self.cores, self.memory_gib, self.os, self.kernel, self.rustc, self.commit
        )
    }
}

/// VmRSS and VmHWM of a process, in MiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss_mib: f64,
    pub hwm_mib: f64,
}

pub fn memory_of(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> anyhow::Result<f64> {
        let v = first_line_with(&status, key).ok_or_else(|| anyhow::anyhow!("no {key} in /proc/{pid}/status"))?;
        Ok(v.split_whitespace().next().unwrap_or("0").parse::<f64>()?)
    };
    Ok(Memory { rss_mib: kib("VmRSS")? / 1024.0, hwm_mib: kib("VmHWM")? / 1024.0 })
}

/// The file system holding `path`, from /proc/mounts: "ext4 on /dev/vda (mounted at /)".
pub fn filesystem_of(path: &std::path::Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            Some((fields.next()?, fields.next()?, fields.next()?))
        })
        .filter(|(_, at, _)| path.starts_with(at))
        .max_by_key(|(_, at, _)| at.len())
        .map_or_else(
            || "unknown file system".into(),
            |(device, at, kind)| format!("{kind} on {device}, mounted at {at}"),
        )
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

/// Nearest-rank percentile (`p` in 0..=100) of unsorted samples, in milliseconds.
pub fn percentile(samples: &[Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    ms(sorted[rank.clamp(1, sorted.len()) - 1])
}

pub fn median(samples: &[Duration]) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let n = sorted.len();
    if n % 2 == 1 { ms(sorted[n / 2]) } else { (ms(sorted[n / 2 - 1]) + ms(sorted[n / 2])) / 2.0 }
}

pub fn min(samples: &[Duration]) -> f64 {
    samples.iter().min().map(|d| ms(*d)).unwrap_or(f64::NAN)
}
