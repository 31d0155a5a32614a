//! Masking runs on every cell of every row, so its cost per clean value is what matters:
//! these benches measure a typical clean row, one cell with an email, and 4 KiB JSON documents.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use gatehouse_mask::{MaskCounts, Masker, column_hint};
use serde_json::{Value, json};

const COLUMNS: [&str; 8] = [
    "id",
    "customer",
    "created_at",
    "status",
    "amount",
    "country",
    "notes",
    "updated_at",
];

const ROW: [&str; 8] = [
    "1048576",
    "Alice Martin",
    "2024-01-15 10:30:00+00",
    "shipped",
    "1299.50",
    "FR",
    "Leave at the front desk",
    "2024-01-16 08:05:13.123456+00",
];

/// About 4 KiB of a Kubernetes pod list with a few sensitive values, or none.
fn document(sensitive: bool) -> Value {
    let items: Vec<Value> = (0..7)
        .map(|i| {
            json!({
                "metadata": {
                    "name": format!("web-{i}-7d4b9c8f6d-x2k9p"),
                    "namespace": "prod",
                    "uid": "550e8400-e29b-41d4-a716-446655440000",
                    "labels": {"app": "web", "pod-template-hash": "7d4b9c8f6d"},
                    "creationTimestamp": "2024-01-15T10:30:00Z",
                },
                "spec": {
                    "containers": [{
                        "name": "web",
                        "image": "registry.example.com/web:1.4.2",
                        "env": [
                            {"name": "MODE", "value": "production"},
                            {"name": "DB_PASSWORD", "value": if sensitive { "hunter2" } else { "" }},
                            {"name": "CONTACT", "value": if sensitive { "ops@example.com" } else { "ops team" }},
                        ],
                        "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}},
                    }],
                    "nodeName": "node-3",
                },
                "status": {"phase": "Running", "podIP": "10.244.1.17", "startTime": "2024-01-15T10:30:02Z"},
            })
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "123456"}, "items": items})
}

fn benches(c: &mut Criterion) {
    let masker = Masker::all();
    let hints: Vec<_> = COLUMNS.iter().map(|name| column_hint(name)).collect();

    c.bench_function("row_8_clean_cells_mask_text", |b| {
        b.iter(|| {
            let mut counts = MaskCounts::default();
            for cell in ROW {
                black_box(masker.mask_text(black_box(cell), &mut counts));
            }
            counts
        })
    });
    c.bench_function("row_8_clean_cells_mask_column", |b| {
        b.iter(|| {
            let mut counts = MaskCounts::default();
            for (name, cell) in COLUMNS.iter().zip(ROW) {
                black_box(masker.mask_column(name, black_box(cell), &mut counts));
            }
            counts
        })
    });
    c.bench_function("row_8_clean_cells_mask_hinted", |b| {
        b.iter(|| {
            let mut counts = MaskCounts::default();
            for (hint, cell) in hints.iter().zip(ROW) {
                black_box(masker.mask_hinted(*hint, black_box(cell), &mut counts));
            }
            counts
        })
    });
    // One row of bench/pgbench.sh's streamed table as the PostgreSQL relay masks it: the
    // column hints resolved once, each value as wire bytes (id, email column, md5 note).
    let stream_hints = [column_hint("id"), column_hint("email"), column_hint("note")];
    let stream_row: [&[u8]; 3] = [
        b"421337",
        b"user421337@example.com",
        b"3c59dc048e8850243be8079a5c74d079",
    ];
    c.bench_function("stream_row_id_email_md5_hinted_bytes", |b| {
        b.iter(|| {
            let mut counts = MaskCounts::default();
            for (hint, cell) in stream_hints.iter().zip(stream_row) {
                black_box(masker.mask_hinted_bytes(*hint, black_box(cell), &mut counts));
            }
            counts
        })
    });
    c.bench_function("cell_with_email", |b| {
        b.iter(|| {
            let mut counts = MaskCounts::default();
            black_box(masker.mask_text(black_box("Contact: alice.martin@example.com"), &mut counts));
            counts
        })
    });
    for (name, sensitive) in [("json_4k_clean", false), ("json_4k_sensitive", true)] {
        let doc = document(sensitive);
        let size = doc.to_string().len();
        assert!((3_500..=5_000).contains(&size), "{name} is {size} bytes");
        c.bench_function(name, |b| {
            b.iter_batched(
                || doc.clone(),
                |mut doc| {
                    let mut counts = MaskCounts::default();
                    masker.mask_json(&mut doc, &mut counts);
                    (doc, counts)
                },
                BatchSize::SmallInput,
            )
        });
    }
}

criterion_group! {
    name = mask;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30);
    targets = benches
}
criterion_main!(mask);
