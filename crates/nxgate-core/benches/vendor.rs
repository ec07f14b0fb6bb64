//! NXCloud's answer code, read the way every answer is read (`vendor::read_code`), without
//! parsing the body: a 1 KiB ping answer, and an export of about 1 MiB whose `retCode`
//! comes last (the worst case: one pass over the bytes) or first, beside a full
//! `serde_json` parse of the same export.
//!
//! `cargo bench -p nxgate-core --bench vendor`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use nxgate_core::vendor::read_code;

fn export(code_first: bool) -> Vec<u8> {
    let mut body =
        if code_first { br#"{"retCode":0,"retMsg":"success","#.to_vec() } else { br#"{"retMsg":"success","#.to_vec() };
    body.extend_from_slice(br#""responseID":"r","data":{"rows":["#);
    while body.len() < 1 << 20 {
        body.extend_from_slice(
            br#"{"phone":"+8613800000000","callStatus":1,"intent":"A","note":"a \"quoted\" word","code":3},"#,
        );
    }
    body.extend_from_slice(if code_first { br#""end"]}}"#.as_slice() } else { br#""end"]},"retCode":0}"#.as_slice() });
    body
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("vendor_code");
    let mut ping = br#"{"code":0,"msg":"success","reqId":"r","timestamp":1,"data":""#.to_vec();
    ping.resize(1022, b'x');
    ping.extend_from_slice(br#""}"#);
    assert_eq!(read_code(&ping), Some(0));
    g.throughput(Throughput::Bytes(ping.len() as u64));
    g.bench_function("1KiB_ping", |b| b.iter(|| read_code(black_box(&ping))));
    for (name, code_first) in [("1MiB_export_code_last", false), ("1MiB_export_code_first", true)] {
        let body = export(code_first);
        assert_eq!(read_code(&body), Some(0));
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| b.iter(|| read_code(black_box(&body))));
    }
    // Side by side: what parsing the whole export to find the same field would cost.
    let body = export(false);
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("1MiB_export_serde_json_full_parse", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&body)).map(|v| v["retCode"].as_i64()))
    });
    g.finish();
}

criterion_group!(vendor_benches, benches);
criterion_main!(vendor_benches);
