//! Routing lookup cost against table size: `RouteTable::lookup` for 10, 100, 1,000 and
//! 10,000 hosts, over a shuffled mix of hits and misses. The claim it checks: lookup time is
//! flat in the number of hosts (two hash probes at most, then a short prefix list).
//!
//! ```sh
//! cargo run --release --example route_lookup
//! ROUTE_LOOKUP_RUNS=21 ROUTE_LOOKUP_PER_RUN=5000000 cargo run --release --example route_lookup
//! ```
//!
//! Per size the table holds, per host index `i`:
//! - 80 % exact hosts `app-<i>.customers.example.com`; every 5th of them has 2–3 path
//!   prefixes (`/`, `/api/`, `/api/v2/`, or `/api/` + `/static/` without `/`);
//! - 20 % one-label wildcards `*.t<i>.tenants.example.net`.
//!
//! The query mix (fixed size, shuffled, the same proportions for every table size):
//! exact hit 30 %, exact hit with mixed case 10 %, exact hit with `:port` 10 %, path-prefix
//! hit 10 %, wildcard hit 15 %, misses 25 % (unknown host, a name two labels under a wildcard,
//! a path no prefix of its host covers). Every query's expected answer is checked once before
//! anything is timed.
//!
//! The queries are packed into one buffer (like request headers) so the timing is the lookup
//! and not chasing separate heap strings. Time is the thread's CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`), which a shared, busy machine inflates far less than wall time
//! (the median wall figure is printed too).
//!
//! Output per size: routes, build time, and ns/lookup of the mix (median, min, p90 and max of
//! the runs), then the median ns/lookup of each kind of query on its own.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use switchyard::core::config::Route;
use switchyard::core::routing::RouteTable;

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];
/// Distinct queries in the mix (the working set is the same for every table size).
const QUERIES: usize = 100_000;

/// Deterministic xorshift64*: the same tables and queries on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Exact,
    MixedCase,
    Port,
    Prefix,
    Wildcard,
    Miss,
}

const KINDS: [(Kind, &str, u32); 6] = [
    (Kind::Exact, "exact", 30),
    (Kind::MixedCase, "MiXeD", 10),
    (Kind::Port, ":port", 10),
    (Kind::Prefix, "prefix", 10),
    (Kind::Wildcard, "wildcard", 15),
    (Kind::Miss, "miss", 25),
];

struct Query {
    host: String,
    path: String,
    expect: Option<usize>,
}

/// What a host index holds in the table.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Exact host, path `/` only.
    Plain,
    /// Exact host with `/`, `/api/`, `/api/v2/`.
    Three,
    /// Exact host with `/api/` and `/static/` only (`/` misses).
    Two,
    /// `*.t<i>.tenants.example.net`, path `/`.
    Wild,
}

fn shape(i: usize) -> Shape {
    match i % 10 {
        3 | 8 => Shape::Wild,
        0 => Shape::Three,
        5 => Shape::Two,
        _ => Shape::Plain,
    }
}

fn exact_host(i: usize) -> String {
    format!("app-{i}.customers.example.com")
}

fn wild_parent(i: usize) -> String {
    format!("t{i}.tenants.example.net")
}

fn service_of(i: usize, prefix: usize, nsvc: usize) -> usize {
    (i * 3 + prefix) % nsvc
}

fn build_routes(hosts: usize, nsvc: usize) -> Vec<Route> {
    let svc = |n: usize| format!("svc-{n}");
    let mut routes = Vec::new();
    for i in 0..hosts {
        let mut push = |host: String, prefix: &str, k: usize| {
            routes.push(Route {
                host,
                path_prefix: prefix.into(),
                service: svc(service_of(i, k, nsvc)),
                middlewares: Default::default(),
            })
        };
        match shape(i) {
            Shape::Plain => push(exact_host(i), "/", 0),
            Shape::Three => {
                push(exact_host(i), "/", 0);
                push(exact_host(i), "/api/", 1);
                push(exact_host(i), "/api/v2/", 2);
            }
            Shape::Two => {
                push(exact_host(i), "/api/", 1);
                push(exact_host(i), "/static/", 3);
            }
            Shape::Wild => push(format!("*.{}", wild_parent(i)), "/", 0),
        }
    }
    routes
}

fn mixed_case(s: &str, rng: &mut Rng) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if rng.below(2) == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    // At least one upper-case letter, so the lower-casing path is always taken.
    if !out.bytes().any(|b| b.is_ascii_uppercase()) {
        out = out.replacen('a', "A", 1);
    }
    out
}

/// A host index of the given shapes.
fn pick(hosts: usize, shapes: &[Shape], rng: &mut Rng) -> usize {
    loop {
        let i = rng.below(hosts);
        if shapes.contains(&shape(i)) {
            return i;
        }
    }
}

fn make_query(kind: Kind, hosts: usize, nsvc: usize, rng: &mut Rng) -> Query {
    const EXACT: &[Shape] = &[Shape::Plain, Shape::Three];
    let q = |host: String, path: &str, expect: Option<usize>| Query {
        host,
        path: path.into(),
        expect,
    };
    let n = rng.below(1_000_000);
    match kind {
        Kind::Exact => {
            let i = pick(hosts, EXACT, rng);
            q(exact_host(i), "/index.html", Some(service_of(i, 0, nsvc)))
        }
        Kind::MixedCase => {
            let i = pick(hosts, EXACT, rng);
            let h = mixed_case(&exact_host(i), rng);
            q(h, "/", Some(service_of(i, 0, nsvc)))
        }
        Kind::Port => {
            let i = pick(hosts, EXACT, rng);
            let h = format!("{}:{}", exact_host(i), [80, 443, 8080, 8443][n % 4]);
            q(h, "/login", Some(service_of(i, 0, nsvc)))
        }
        Kind::Prefix => {
            let i = pick(hosts, &[Shape::Three, Shape::Two], rng);
            match (shape(i), n % 3) {
                (Shape::Three, 0) => {
                    q(exact_host(i), "/api/v1/users", Some(service_of(i, 1, nsvc)))
                }
                (Shape::Three, 1) => q(
                    exact_host(i),
                    "/api/v2/users/42",
                    Some(service_of(i, 2, nsvc)),
                ),
                (Shape::Three, _) => q(
                    exact_host(i),
                    "/assets/app.js",
                    Some(service_of(i, 0, nsvc)),
                ),
                (_, 0) => q(
                    exact_host(i),
                    "/static/app.css",
                    Some(service_of(i, 3, nsvc)),
                ),
                (_, _) => q(exact_host(i), "/api/orders", Some(service_of(i, 1, nsvc))),
            }
        }
        Kind::Wildcard => {
            let i = pick(hosts, &[Shape::Wild], rng);
            let h = format!("user{n}.{}", wild_parent(i));
            q(h, "/", Some(service_of(i, 0, nsvc)))
        }
        Kind::Miss => match n % 3 {
            // Unknown host: one exact probe, one wildcard probe.
            0 => q(format!("www{n}.unknown-site.example.org"), "/", None),
            // Two labels under a wildcard: the wildcard matches one label only.
            1 => {
                let i = pick(hosts, &[Shape::Wild], rng);
                q(format!("a{n}.b.{}", wild_parent(i)), "/", None)
            }
            // Known host, but no prefix covers the path.
            _ => {
                let i = pick(hosts, &[Shape::Two], rng);
                q(exact_host(i), "/", None)
            }
        },
    }
}

fn make_queries(
    kind: Option<Kind>,
    count: usize,
    hosts: usize,
    nsvc: usize,
    rng: &mut Rng,
) -> Vec<Query> {
    let total: u32 = KINDS.iter().map(|k| k.2).sum();
    let mut out = Vec::with_capacity(count);
    for n in 0..count {
        let k = match kind {
            Some(k) => k,
            None => {
                // Exact proportions, then shuffled.
                let slot = (n as u64 * total as u64 / count as u64) as u32;
                let mut acc = 0;
                KINDS
                    .iter()
                    .find(|(_, _, w)| {
                        acc += w;
                        slot < acc
                    })
                    .unwrap()
                    .0
            }
        };
        out.push(make_query(k, hosts, nsvc, rng));
    }
    rng.shuffle(&mut out);
    out
}

/// The queries packed into one buffer, as a proxy sees them in its request-header buffers:
/// what is timed is the lookup, not chasing 100,000 separate heap strings.
struct Packed {
    buf: String,
    /// (host start, host end, path end); the path starts where the host ends.
    idx: Vec<(u32, u32, u32)>,
}

impl Packed {
    fn new(queries: &[Query]) -> Packed {
        let mut buf = String::new();
        let mut idx = Vec::with_capacity(queries.len());
        for q in queries {
            let h0 = buf.len() as u32;
            buf.push_str(&q.host);
            let h1 = buf.len() as u32;
            buf.push_str(&q.path);
            idx.push((h0, h1, buf.len() as u32));
        }
        Packed { buf, idx }
    }
}

/// CPU time of this thread, ns: unlike wall time, not inflated while the scheduler runs
/// someone else on a shared machine.
fn thread_cpu_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// (thread-CPU ns, wall ns) per lookup of each run.
fn time_runs(table: &RouteTable, q: &Packed, per_run: usize, runs: usize) -> Vec<(f64, f64)> {
    let passes = per_run.div_ceil(q.idx.len()).max(1);
    let n = (passes * q.idx.len()) as f64;
    let mut out = Vec::with_capacity(runs);
    let mut sink = 0usize;
    let pass = |sink: &mut usize| {
        for &(h0, h1, p1) in &q.idx {
            let host = &q.buf[h0 as usize..h1 as usize];
            let path = &q.buf[h1 as usize..p1 as usize];
            let r = table.lookup(black_box(host), black_box(path));
            *sink = sink.wrapping_add(black_box(r).unwrap_or(usize::MAX));
        }
    };
    // One unmeasured pass to warm caches and the branch predictor.
    pass(&mut sink);
    for _ in 0..runs {
        let (c, t) = (thread_cpu_ns(), Instant::now());
        for _ in 0..passes {
            pass(&mut sink);
        }
        let wall = t.elapsed().as_nanos() as f64;
        let cpu = (thread_cpu_ns() - c) as f64;
        out.push((cpu / n, wall / n));
    }
    black_box(sink);
    out
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

fn main() {
    let runs = env_usize("ROUTE_LOOKUP_RUNS", 11);
    let per_run = env_usize("ROUTE_LOOKUP_PER_RUN", 2_000_000);
    let per_kind_run = (per_run / 4).max(QUERIES / 10);

    println!(
        "RouteTable::lookup — per size: {runs} runs x {per_run} lookups over {QUERIES} distinct \
         shuffled queries (30% exact, 10% mixed case, 10% :port, 10% path prefix, 15% wildcard, \
         25% miss); per kind: {runs} runs x {per_kind_run} over {} queries of that kind.",
        QUERIES / 10
    );
    println!(
        "ns/lookup of thread CPU time (CLOCK_THREAD_CPUTIME_ID; wall time in the last column)."
    );
    println!();
    println!(
        "{:>6} {:>6} {:>5} {:>6} | {:>6} {:>6} {:>6} {:>6} | {} | {:>6}",
        "hosts",
        "routes",
        "svcs",
        "build",
        "median",
        "min",
        "p90",
        "max",
        KINDS
            .iter()
            .map(|k| format!("{:>8}", k.1))
            .collect::<Vec<_>>()
            .join(" "),
        "wall"
    );
    println!(
        "{:>6} {:>6} {:>5} {:>6} | {:>27} | {:>62} | {:>6}",
        "", "", "", "ms", "mix: ns/lookup over the runs", "median ns/lookup per kind", "median"
    );

    let mut medians = Vec::new();
    let mut mins = Vec::new();
    for &hosts in &SIZES {
        let nsvc = (hosts / 10).max(2);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ hosts as u64);
        let routes = build_routes(hosts, nsvc);
        let index: HashMap<String, usize> = (0..nsvc).map(|n| (format!("svc-{n}"), n)).collect();

        let t = Instant::now();
        let table = RouteTable::build(&routes, |_, r| index.get(&r.service).copied());
        let build_ms = t.elapsed().as_secs_f64() * 1e3;
        assert_eq!(table.len(), hosts, "one table entry per host");

        let mix = make_queries(None, QUERIES, hosts, nsvc, &mut rng);
        let per_kind: Vec<Vec<Query>> = KINDS
            .iter()
            .map(|k| make_queries(Some(k.0), QUERIES / 10, hosts, nsvc, &mut rng))
            .collect();
        for q in mix.iter().chain(per_kind.iter().flatten()) {
            assert_eq!(
                table.lookup(&q.host, &q.path),
                q.expect,
                "lookup({:?}, {:?})",
                q.host,
                q.path
            );
        }

        let all = time_runs(&table, &Packed::new(&mix), per_run, runs);
        let mut cpu: Vec<f64> = all.iter().map(|r| r.0).collect();
        let mut wall: Vec<f64> = all.iter().map(|r| r.1).collect();
        let med = median(&mut cpu); // sorts
        let p90 = cpu[(cpu.len() * 9 / 10).min(cpu.len() - 1)];
        let (min, max) = (cpu[0], cpu[cpu.len() - 1]);
        medians.push(med);
        mins.push(min);
        let kinds: Vec<String> = per_kind
            .iter()
            .map(|qs| {
                let r = time_runs(&table, &Packed::new(qs), per_kind_run, runs);
                let mut c: Vec<f64> = r.iter().map(|r| r.0).collect();
                format!("{:>8.1}", median(&mut c))
            })
            .collect();
        println!(
            "{:>6} {:>6} {:>5} {:>6.2} | {:>6.1} {:>6.1} {:>6.1} {:>6.1} | {} | {:>6.1}",
            hosts,
            routes.len(),
            nsvc,
            build_ms,
            med,
            min,
            p90,
            max,
            kinds.join(" "),
            median(&mut wall)
        );
    }
    println!();
    println!(
        "10,000 hosts vs 10 hosts (mix): median {:.2}x, min {:.2}x",
        medians[medians.len() - 1] / medians[0],
        mins[mins.len() - 1] / mins[0]
    );
}
