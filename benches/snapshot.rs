//! Snapshot benchmarks against the DESIGN.md budget:
//! - lookup median with 1M single IPv4 + 10k ranges, half hits, against one radix trie
//!   (ip_network_table) holding everything, in the same run;
//! - a 1k-decision delta (500 new, 500 deleted) applied and published on the 1M set.
//!
//! Run: `cargo bench --bench snapshot`. Size: `CERBERUS_BENCH_SIZE=100000 cargo bench
//! --bench snapshot` for another number of single IPs (ranges are 1% of it; the group
//! names keep saying 1M); an environment variable, since criterion reads every argument
//! as a filter. The smoke run of scripts/test.sh: `CERBERUS_BENCH_SIZE=1000 cargo bench
//! --bench snapshot -- --test` (each case once).

use cerberus::decision::{Decision, Target};
use cerberus::store::Decider;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ip_network_table::IpNetworkTable;
use ipnet::IpNet;
use rand::{Rng, SeedableRng};
use std::net::{IpAddr, Ipv4Addr};

#[allow(dead_code)]
mod common;

/// Single IPs in the set (`CERBERUS_BENCH_SIZE`, default 1,000,000; at least 1,000).
fn singles_n() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| common::size_env(1_000_000).max(1_000))
}

fn ranges_n() -> usize {
    singles_n() / 100
}
const FAR_FUTURE: u32 = u32::MAX - 1;

fn decision(id: i64, target: Target) -> Decision {
    Decision {
        id,
        target,
        type_name: "ban".into(),
        origin: "lists".into(),
        scenario: "firehol".into(),
        expires_at: FAR_FUTURE,
    }
}

struct Data {
    singles: Vec<u32>,
    ranges: Vec<(u32, u8)>,
}

fn data() -> Data {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut seen = ahash::AHashSet::new();
    let mut singles = Vec::with_capacity(singles_n());
    while singles.len() < singles_n() {
        let a: u32 = rng.gen();
        if seen.insert(a) {
            singles.push(a);
        }
    }
    let ranges = (0..ranges_n())
        .map(|_| {
            let prefix = rng.gen_range(16..=28u8);
            let addr: u32 = rng.gen::<u32>() & (u32::MAX << (32 - prefix));
            (addr, prefix)
        })
        .collect();
    Data { singles, ranges }
}

fn lookups(c: &mut Criterion) {
    let data = data();
    let decider = Decider::new();
    let mut writer = decider.writer();
    let mut trie: IpNetworkTable<u32> = IpNetworkTable::new();
    for (i, &a) in data.singles.iter().enumerate() {
        writer.insert(&decision(
            i as i64,
            Target::from_ip(IpAddr::V4(Ipv4Addr::from(a))),
        ));
        trie.insert(
            ip_network::Ipv4Network::new(Ipv4Addr::from(a), 32).unwrap(),
            i as u32,
        );
    }
    for (i, &(a, p)) in data.ranges.iter().enumerate() {
        let net: IpNet = format!("{}/{p}", Ipv4Addr::from(a)).parse().unwrap();
        writer.insert(&decision((singles_n() + i) as i64, Target::from_net(net)));
        trie.insert(
            ip_network::Ipv4Network::new(Ipv4Addr::from(a), p).unwrap(),
            (singles_n() + i) as u32,
        );
    }
    let snap = writer.publish();
    let singles_only = {
        let d = Decider::new();
        let mut w = d.writer();
        for (i, &a) in data.singles.iter().enumerate() {
            w.insert(&decision(
                i as i64,
                Target::from_ip(IpAddr::V4(Ipv4Addr::from(a))),
            ));
        }
        w.publish()
    };
    // Half hits (known single IPs), half random addresses (mostly misses).
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let queries: Vec<IpAddr> = (0..1 << 16)
        .map(|i| {
            let a = if i % 2 == 0 {
                data.singles[rng.gen_range(0..singles_n())]
            } else {
                rng.gen()
            };
            IpAddr::V4(Ipv4Addr::from(a))
        })
        .collect();
    let hits = queries
        .iter()
        .filter(|q| snap.lookup(**q, 0).is_some())
        .count();
    eprintln!(
        "{} decisions, {hits} of {} queries hit",
        snap.len(),
        queries.len()
    );

    let mut g = c.benchmark_group("lookup_1M_ips_10k_ranges_half_hits");
    let mut i = 0usize;
    g.bench_function("snapshot", |b| {
        b.iter(|| {
            i = (i + 1) & 0xffff;
            black_box(snap.lookup(black_box(queries[i]), 0).is_some())
        })
    });
    g.bench_function("snapshot_singles_only", |b| {
        b.iter(|| {
            i = (i + 1) & 0xffff;
            black_box(singles_only.lookup(black_box(queries[i]), 0).is_some())
        })
    });
    g.bench_function("decider_hot_path", |b| {
        b.iter(|| {
            i = (i + 1) & 0xffff;
            decider.decide(black_box(queries[i]), 0, |_, hit| black_box(hit.is_some()))
        })
    });
    g.bench_function("radix_trie_ip_network_table", |b| {
        b.iter(|| {
            i = (i + 1) & 0xffff;
            let IpAddr::V4(a) = queries[i] else {
                unreachable!()
            };
            black_box(trie.longest_match(black_box(a)).is_some())
        })
    });
    // Reference point: the single IPs alone in a std HashMap with ahash (no ranges, no
    // expiry, no metadata), the floor DESIGN.md quotes.
    let plain: ahash::AHashMap<u32, u32> = data
        .singles
        .iter()
        .enumerate()
        .map(|(i, &a)| (a, i as u32))
        .collect();
    g.bench_function("reference_std_hashmap_singles_only", |b| {
        b.iter(|| {
            i = (i + 1) & 0xffff;
            let IpAddr::V4(a) = queries[i] else {
                unreachable!()
            };
            black_box(plain.get(&u32::from(black_box(a))).is_some())
        })
    });
    let fat: ahash::AHashMap<u32, [u32; 4]> = data
        .singles
        .iter()
        .enumerate()
        .map(|(i, &a)| (a, [i as u32; 4]))
        .collect();
    // The same with a 16-byte value, the size of our verdict: the fair floor.
    g.bench_function("reference_std_hashmap_singles_16_byte_values", |b| {
        b.iter(|| {
            i = (i + 1) & 0xffff;
            let IpAddr::V4(a) = queries[i] else {
                unreachable!()
            };
            black_box(fat.get(&u32::from(black_box(a))).map(|v| v[2]))
        })
    });
    g.finish();

    // A 1k delta on the 1M set: 500 new IPs, 500 deleted, published.
    let mut churn = Churn {
        next_id: (singles_n() + ranges_n()) as i64,
        live: std::collections::VecDeque::new(),
        rng: rand::rngs::StdRng::seed_from_u64(13),
    };
    churn.add(&mut writer, 500);
    writer.publish();
    let mut g = c.benchmark_group("delta_1k_on_1M");
    g.sample_size(30);
    g.bench_function("apply_and_publish", |b| {
        b.iter(|| {
            churn.replace(&mut writer, 500);
            black_box(writer.publish().generation())
        })
    });
    g.bench_function("apply_and_publish_with_a_range", |b| {
        b.iter(|| {
            churn.replace(&mut writer, 499);
            let net: IpNet = format!(
                "{}/24",
                Ipv4Addr::from(churn.rng.gen::<u32>() & 0xffff_ff00)
            )
            .parse()
            .unwrap();
            writer.insert(&decision(churn.next_id, Target::from_net(net)));
            churn.live.push_back((churn.next_id, Target::from_net(net)));
            churn.next_id += 1;
            black_box(writer.publish().generation())
        })
    });
    g.finish();

    // Lookups while another thread publishes 1k deltas back to back: readers never wait.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut published = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                churn.replace(&mut writer, 500);
                writer.publish();
                published += 1;
            }
            published
        })
    };
    let mut g = c.benchmark_group("lookup_1M_ips_10k_ranges_half_hits");
    g.bench_function("decider_hot_path_during_1k_publishes", |b| {
        b.iter(|| {
            i = (i + 1) & 0xffff;
            decider.decide(black_box(queries[i]), 0, |_, hit| black_box(hit.is_some()))
        })
    });
    g.finish();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = publisher.join().unwrap();
    eprintln!("{published} deltas published during the last measurement");
}

/// Replaces decisions on random single IPs, oldest first, keeping the set's size.
struct Churn {
    next_id: i64,
    live: std::collections::VecDeque<(i64, Target)>,
    rng: rand::rngs::StdRng,
}

impl Churn {
    fn add(&mut self, writer: &mut cerberus::store::Writer, n: usize) {
        for _ in 0..n {
            let t = Target::from_ip(IpAddr::V4(Ipv4Addr::from(self.rng.gen::<u32>())));
            writer.insert(&decision(self.next_id, t));
            self.live.push_back((self.next_id, t));
            self.next_id += 1;
        }
    }

    fn replace(&mut self, writer: &mut cerberus::store::Writer, n: usize) {
        for _ in 0..n {
            let (id, t) = self.live.pop_front().unwrap();
            writer.remove(id, t);
        }
        self.add(writer, n);
    }
}

criterion_group!(benches, lookups);
criterion_main!(benches);
