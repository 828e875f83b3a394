//! Writes a base segment of N random single IPv4 decisions (plus 1% of N random /24
//! ranges and some IPv6) for benchmarks: `cargo run --release -p bouncer-api --example
//! segment_gen -- N OUT.seg`. Expiries are far in the future, so every key is live.

use bouncer_api::segment::{Builder, Verdict, KIND_BASE};
use bouncer_api::Remediation;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(n), Some(out)) = (args.next(), args.next()) else {
        eprintln!("usage: segment_gen N OUT.seg");
        std::process::exit(2);
    };
    let n: u32 = n.parse().expect("N: a number of decisions");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut b = Builder::new(KIND_BASE, 1, 1);
    let ban = b.meta(
        Remediation::Ban,
        "ban",
        "crowdsec",
        "crowdsecurity/http-probing",
    );
    let v = Verdict {
        expires: u32::MAX,
        meta: ban,
    };
    let mut seen = std::collections::HashSet::new();
    while seen.len() < n as usize {
        let key = next() as u32;
        if seen.insert(key) {
            b.exact4(key, &[v]);
        }
    }
    for _ in 0..n / 100 {
        let first = (next() as u32) & 0xffff_ff00;
        b.range4(first, first | 0xff, v);
    }
    for i in 0..u128::from(n / 100) {
        b.exact6((0x2001_0db8u128 << 96) | i, &[v]);
    }
    std::fs::write(&out, b.finish(next())).expect("writing the segment");
}
