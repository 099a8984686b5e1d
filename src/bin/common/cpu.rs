//! CPU time from /proc, split by who spent it: the whole machine, this
//! process (with the children it waited for), the NATS server and
//! PostgreSQL. What is left of the machine's busy time is the kernel's
//! work that no process is billed for (loopback networking in softirq,
//! block I/O) and any other load.

/// USER_HZ on Linux.
const TICK: f64 = 100.0;

/// CPU seconds used so far, from one reading of /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuMark {
    /// The machine's busy time, every core (idle and iowait excluded).
    pub machine: f64,
    /// This process.
    pub me: f64,
    /// The children this process waited for (pgbench).
    pub children: f64,
    /// Every `nats-server` process on the machine.
    pub nats: f64,
    /// Every `postgres` process, with the children they waited for: the
    /// postmaster reaps its backends and autovacuum workers, so their time
    /// stays counted after they exit.
    pub postgres: f64,
}

impl CpuMark {
    pub fn now() -> CpuMark {
        let (me, children) =
            stat_seconds(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default());
        let (nats, postgres) = servers_seconds();
        CpuMark {
            machine: machine_busy(),
            me,
            children,
            nats,
            postgres,
        }
    }

    /// What was spent since `self`, per field.
    pub fn until(&self, later: &CpuMark) -> CpuMark {
        CpuMark {
            machine: later.machine - self.machine,
            me: later.me - self.me,
            children: later.children - self.children,
            nats: later.nats - self.nats,
            postgres: later.postgres - self.postgres,
        }
    }

    /// Milliseconds per unit of work, of `count` units.
    pub fn ms_per(&self, count: usize) -> CpuMark {
        let k = 1000.0 / count.max(1) as f64;
        CpuMark {
            machine: self.machine * k,
            me: self.me * k,
            children: self.children * k,
            nats: self.nats * k,
            postgres: self.postgres * k,
        }
    }

    /// The machine's busy time that was not this process's, its
    /// children's, NATS's or PostgreSQL's.
    pub fn rest(&self) -> f64 {
        (self.machine - self.me - self.children - self.nats - self.postgres).max(0.0)
    }
}

fn machine_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .next()
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .enumerate()
                // user nice system idle iowait irq softirq steal
                .filter(|(i, _)| ![3, 4].contains(i) && *i < 8)
                .filter_map(|(_, v)| v.parse::<f64>().ok())
                .sum::<f64>()
        })
        .unwrap_or(0.0)
        / TICK
}

/// (own, waited-for children's) CPU seconds in a `/proc/<pid>/stat` line.
fn stat_seconds(stat: &str) -> (f64, f64) {
    // Fields after the command name `(...)`: utime is the 12th, cstime the 15th.
    let fields: Vec<f64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let at = |i: usize| fields.get(i).copied().unwrap_or(0.0);
    ((at(10) + at(11)) / TICK, (at(12) + at(13)) / TICK)
}

/// CPU seconds of every `nats-server` and every `postgres` process, each
/// with the children it waited for, in one pass over /proc.
fn servers_seconds() -> (f64, f64) {
    let (mut nats, mut postgres) = (0.0, 0.0);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (nats, postgres);
    };
    for entry in dir.filter_map(Result::ok) {
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let comm = stat
            .split_once('(')
            .and_then(|(_, rest)| rest.rsplit_once(')'))
            .map_or("", |(comm, _)| comm);
        let total = || {
            let (own, children) = stat_seconds(&stat);
            own + children
        };
        match comm {
            "nats-server" => nats += total(),
            "postgres" => postgres += total(),
            _ => {}
        }
    }
    (nats, postgres)
}
