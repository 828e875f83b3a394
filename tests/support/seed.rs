//! The seed of a randomized test: `CERBERUS_TEST_SEED` to replay a run, else a fresh one;
//! printed either way, so that a failure can be replayed.

pub fn seed() -> u64 {
    let seed = match std::env::var("CERBERUS_TEST_SEED") {
        Ok(s) => s.parse().expect("CERBERUS_TEST_SEED is not a number"),
        Err(_) => rand::random(),
    };
    eprintln!("seed: {seed} (replay with CERBERUS_TEST_SEED={seed})");
    seed
}
