//! Every response that may carry a Secret or a detectable value is read and masked on the
//! gateway, so its cost per response is on the data path: a pod as the API server returns it
//! (nothing to mask: the pre-pass alone), the same pod with an e-mail address in an
//! environment value (the `Value` round trip), and a list of 1,000 Secrets.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse_kube::secrets::{Masking, mask_document};
use gatehouse_mask::{MaskCounts, Masker};
use serde_json::{Value, json};

/// A running pod with the fields a real API server fills in (about 2.5 kB).
fn pod(env: Value) -> Bytes {
    let doc = json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "name": "web-7d9f8b6c5d-x2k4p", "generateName": "web-7d9f8b6c5d-", "namespace": "shop",
            "uid": "0e7c2a5b-4f1d-4c3e-9a8b-7d6e5f4c3b2a", "resourceVersion": "48213977",
            "creationTimestamp": "2026-11-27T09:14:02Z",
            "labels": {"app": "web", "pod-template-hash": "7d9f8b6c5d"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8b6c5d",
                "uid": "5b4a3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "containers": [{
                "name": "web", "image": "registry.example.com/shop/web:1.42.0",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "env": env,
                "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
                "volumeMounts": [{"name": "kube-api-access-8xk2q", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent"
            }],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "web", "nodeName": "node-3", "schedulerName": "default-scheduler",
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
        },
        "status": {
            "phase": "Running", "hostIP": "10.0.3.17", "podIP": "10.244.3.41",
            "podIPs": [{"ip": "10.244.3.41"}], "startTime": "2026-11-27T09:14:02Z", "qosClass": "Burstable",
            "conditions": [
                {"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-11-27T09:14:02Z"},
                {"type": "Ready", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-11-27T09:14:09Z"},
                {"type": "ContainersReady", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-11-27T09:14:09Z"},
                {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-11-27T09:14:02Z"}
            ],
            "containerStatuses": [{
                "name": "web", "ready": true, "restartCount": 0, "started": true,
                "image": "registry.example.com/shop/web:1.42.0",
                "imageID": "registry.example.com/shop/web@sha256:3f1c9a7e5b2d4c6e8a0f1b3d5c7e9a2b4d6f8a0c1e3b5d7f9a2c4e6b8d0f1a3c",
                "containerID": "containerd://9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b",
                "state": {"running": {"startedAt": "2026-11-27T09:14:08Z"}}
            }]
        }
    });
    Bytes::from(serde_json::to_vec(&doc).expect("a pod serialises"))
}

fn secrets() -> Bytes {
    let items: Vec<Value> = (0..1000)
        .map(|i| {
            json!({"metadata": {"name": format!("secret-{i:04}"), "namespace": "bulk", "resourceVersion": "1"},
                "type": "Opaque", "data": {"password": "aHVudGVyMi1wcm9kLXNlY3JldA==", "user": "YWRtaW4="}})
        })
        .collect();
    let list = json!({"kind": "SecretList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items});
    Bytes::from(serde_json::to_vec(&list).expect("a list serialises"))
}

fn bench(c: &mut Criterion) {
    let detect = Masking::Detect(Masker::all());
    let clean = pod(json!([{"name": "MODE", "value": "fast"}, {"name": "PORT", "value": "8080"}]));
    let email = pod(json!([{"name": "MODE", "value": "fast"}, {"name": "ADMIN", "value": "lena@example.com"}]));
    let list = secrets();
    let mut group = c.benchmark_group("kube_mask");
    group.bench_function("pod, nothing to mask", |b| {
        b.iter(|| mask_document(black_box(clean.clone()), &detect, &mut MaskCounts::default()).expect("valid JSON"))
    });
    group.bench_function("pod, an e-mail in env", |b| {
        b.iter(|| mask_document(black_box(email.clone()), &detect, &mut MaskCounts::default()).expect("valid JSON"))
    });
    group.sample_size(20);
    group.bench_function("list of 1,000 Secrets", |b| {
        b.iter(|| {
            mask_document(black_box(list.clone()), &Masking::Secrets, &mut MaskCounts::default()).expect("valid JSON")
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
