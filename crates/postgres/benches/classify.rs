//! Cost of classifying a short statement and a five-statement string.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse_postgres::classify::classify;

fn bench(c: &mut Criterion) {
    c.bench_function("classify short select", |b| {
        b.iter(|| classify(black_box("SELECT abalance FROM pgbench_accounts WHERE aid = $1")))
    });
    // Reference: PostgreSQL's parser alone, without our tree walk.
    c.bench_function("pg_query parse only, short select", |b| {
        b.iter(|| pg_query::parse(black_box("SELECT abalance FROM pgbench_accounts WHERE aid = $1"), 0))
    });
    let five = "BEGIN; UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 7; \
                SELECT abalance FROM pgbench_accounts WHERE aid = 7; \
                INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 7, 1, now()); \
                COMMIT";
    c.bench_function("classify five statements", |b| b.iter(|| classify(black_box(five))));
}

criterion_group!(benches, bench);
criterion_main!(benches);
