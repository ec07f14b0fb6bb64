//! The per-request work of nxgate without sockets: everything the request path does to a
//! 1 KiB POST between Pingora parsing it and Pingora writing the answer, built from the
//! pipeline's own step functions in the order `pipeline::handle` and
//! `exchange::signed_exchange` call them.
//!
//! `cargo bench --bench request_path`. Steps, each measured alone and then all together:
//! 1. `select`: tenant by `Authorization: Bearer <key>` (`TenantDirectory::select`: sha256 of
//!    the key, constant-time compare with every stored digest; 4 tenants x 2 keys here).
//! 2. `route`: `routes::is_allowed` on `/callcentre/api/v3/ping`.
//! 3. `request_headers`: `headers::forwardable_request_headers` (the filter alone).
//! 4. `sign`: fresh `requestID`, `createTs`, `signing::signed_headers` over the 1 KiB body.
//! 5. `upstream_header`: the Pingora `RequestHeader` sent upstream (filtered caller headers,
//!    Host, the five signature headers, Content-Length): `exchange::upstream_request` itself.
//! 6. `verify`: `verify::verify_response` on the signed 1 KiB answer.
//! 7. `response_headers`: `pipeline::caller_response_header` (hop-by-hop and framing
//!    headers removed from the upstream's `ResponseHeader`, Content-Length and x-request-id set).
//!
//! `whole_path/{MD5,SHA256}` runs 1-7 for one request.
//!
//! `key_lookup/{first,last,near_miss,unknown}` times `TenantDirectory::by_key` against
//! 200 stored keys for keys that match at either end or not at all: the times must agree
//! (a guess learns nothing from how long its refusal took).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use std::collections::HashMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use nxgate::policy::exchange::{self, Outbound};
use nxgate_core::config::{self, GatewayConfig};
use nxgate_core::headers;
use nxgate_core::routes;
use nxgate_core::signing::{self, Algorithm, SignedHeaders, SigningInput};
use nxgate_core::tenants::{client_key_digest_hex, TenantDirectory};
use nxgate_core::verify::{self, Expectation};

const PATH: &str = "/callcentre/api/v3/ping";
const BODY_LEN: usize = 1024;

fn config() -> GatewayConfig {
    let mut yaml = String::from(
        "listen: [\"127.0.0.1:8080\"]\nupstream:\n  url: \"https://nxbot.nxcloud.com\"\nadmin_listen: null\ntenants:\n",
    );
    let mut env = HashMap::new();
    for (i, algorithm) in ["MD5", "SHA256", "MD5", "SHA256"].iter().enumerate() {
        let keys: Vec<String> = (0..2)
            .map(|k| format!("\"{}\"", client_key_digest_hex(format!("client-key-{i}-{k}").as_bytes())))
            .collect();
        yaml.push_str(&format!(
            "  - name: t{i}\n    uuid: \"uuid-of-tenant-{i}-0123456789abcd\"\n    secret_env: BENCH_SECRET_{i}\n    algorithm: \"{algorithm}\"\n    client_keys_sha256: [{}]\n",
            keys.join(", ")
        ));
        env.insert(format!("BENCH_SECRET_{i}"), format!("bench-secret-{i}-u7Mf3zUNOkg4lMV9a0E6"));
    }
    config::parse(&yaml, Path::new("bench.yaml"), &env).expect("bench config is valid")
}

/// What a typical internal caller sends.
fn caller_headers(key: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("nxgate.internal:8080"));
    h.insert("user-agent", HeaderValue::from_static("callbot-client/1.4"));
    h.insert("accept", HeaderValue::from_static("*/*"));
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("content-length", HeaderValue::from_static("1024"));
    h.insert("authorization", HeaderValue::from_str(&format!("Bearer {key}")).unwrap());
    h.insert("x-trace-id", HeaderValue::from_static("4bf92f3577b34da6a3ce929d0e0e4736"));
    h
}

fn body() -> Vec<u8> {
    let mut b = b"{\"data\":\"".to_vec();
    b.resize(BODY_LEN - 2, b'x');
    b.extend_from_slice(b"\"}");
    b
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Step 4: a fresh requestID and `signing::sign_request`, as `exchange::signed_exchange` does.
fn sign(uuid: &str, secret: &nxgate_core::secret::Secret, algorithm: Algorithm, body: &[u8]) -> SignedHeaders {
    signing::sign_request(secret, algorithm, body, now(), &signing::new_request_id(), uuid)
}

/// Step 5: the pipeline's own `exchange::upstream_request`.
fn upstream_header(caller: &HeaderMap, signed: &SignedHeaders, body_len: usize) -> RequestHeader {
    let out = Outbound { method: &Method::POST, target: PATH, headers: caller, decoded: false };
    exchange::upstream_request("nxbot.nxcloud.com", out, signed, body_len).expect("valid inputs")
}

/// What the upstream answers: a signed response header for `request_id`.
fn upstream_response(
    uuid: &str,
    secret: &nxgate_core::secret::Secret,
    algorithm: Algorithm,
    request_id: &str,
    body: &[u8],
) -> ResponseHeader {
    let ts = now().to_string();
    let input = SigningInput { body, create_ts: &ts, request_id, uuid };
    let signed = signing::signed_headers(secret, algorithm, &input);
    let mut h = ResponseHeader::build(200, Some(10)).unwrap();
    h.append_header("server", "nginx").unwrap();
    h.append_header("date", "Tue, 25 Nov 2025 20:00:00 GMT").unwrap();
    h.append_header("content-type", "application/json").unwrap();
    h.append_header("content-length", body.len().to_string()).unwrap();
    h.append_header("connection", "keep-alive").unwrap();
    for (name, value) in signed.pairs() {
        h.append_header(name, value).unwrap();
    }
    h
}

/// Step 7: the pipeline's own `caller_response_header`.
fn caller_reply(h: ResponseHeader, request_id: &str, body_len: usize) -> ResponseHeader {
    nxgate::shell::reframe(h, request_id, body_len)
}

fn benches(c: &mut Criterion) {
    let cfg = config();
    let dir = TenantDirectory::new(cfg.tenants.clone(), cfg.default_tenant);
    let body = body();

    let mut steps = c.benchmark_group("request_path");
    // The last tenant's last key: every digest is compared whichever matches.
    let caller = caller_headers("client-key-3-1");
    steps.bench_function("1_select", |b| {
        b.iter(|| {
            dir.select(black_box(&caller).get_all(http::header::AUTHORIZATION).iter().map(|v| v.as_bytes())).is_ok()
        })
    });
    steps.bench_function("2_route", |b| b.iter(|| routes::is_allowed(black_box(PATH), &cfg.allow_prefixes)));
    steps.bench_function("3_request_headers", |b| {
        b.iter(|| headers::forwardable_request_headers(black_box(&caller)).count())
    });
    for t in [&cfg.tenants[0], &cfg.tenants[1]] {
        steps.bench_function(BenchmarkId::new("4_sign", t.algorithm.as_str()), |b| {
            b.iter(|| sign(&t.uuid, &t.secret, t.algorithm, black_box(&body)))
        });
    }
    let t = &cfg.tenants[0];
    let signed = sign(&t.uuid, &t.secret, t.algorithm, &body);
    steps.bench_function("5_upstream_header", |b| b.iter(|| upstream_header(black_box(&caller), &signed, body.len())));
    for t in [&cfg.tenants[0], &cfg.tenants[1]] {
        let signed = sign(&t.uuid, &t.secret, t.algorithm, &body);
        let response = upstream_response(&t.uuid, &t.secret, t.algorithm, &signed.request_id, &body);
        let expect = Expectation {
            request_id: &signed.request_id,
            uuid: &t.uuid,
            algorithm: t.algorithm,
            secret: &t.secret,
            max_clock_skew_secs: 300,
            now: now(),
        };
        assert_eq!(verify::verify_response(&expect, &response.headers, &body), Ok(()));
        steps.bench_function(BenchmarkId::new("6_verify", t.algorithm.as_str()), |b| {
            b.iter(|| verify::verify_response(black_box(&expect), black_box(&response.headers), black_box(&body)))
        });
    }
    let response = upstream_response(&t.uuid, &t.secret, t.algorithm, &signed.request_id, &body);
    steps.bench_function("7_response_headers", |b| {
        b.iter_batched(
            || response.clone(),
            |h| caller_reply(h, &signed.request_id, body.len()),
            criterion::BatchSize::SmallInput,
        )
    });
    steps.finish();

    let mut whole = c.benchmark_group("whole_path");
    for (i, algorithm) in [(0usize, Algorithm::Md5), (1, Algorithm::Sha256)] {
        let caller = caller_headers(&format!("client-key-{i}-0"));
        // The upstream's answer is made outside the timed part: it is the upstream's work.
        // Its requestID is fixed, so the expectation uses it too; the gateway's work is the same.
        let t = &cfg.tenants[i];
        let fixed = sign(&t.uuid, &t.secret, t.algorithm, &body);
        let response = upstream_response(&t.uuid, &t.secret, t.algorithm, &fixed.request_id, &body);
        whole.bench_function(algorithm.as_str(), |b| {
            b.iter_batched(
                || response.clone(),
                |response| {
                    let tenant = dir
                        .select(caller.get_all(http::header::AUTHORIZATION).iter().map(|v| v.as_bytes()))
                        .expect("known key");
                    assert!(routes::is_allowed(PATH, &cfg.allow_prefixes));
                    let signed = sign(&tenant.uuid, &tenant.secret, tenant.algorithm, &body);
                    let header = upstream_header(&caller, &signed, body.len());
                    let expect = Expectation {
                        request_id: &fixed.request_id,
                        uuid: &tenant.uuid,
                        algorithm: signed.algorithm,
                        secret: &tenant.secret,
                        max_clock_skew_secs: 300,
                        now: now(),
                    };
                    let ok = verify::verify_response(&expect, &response.headers, &body);
                    debug_assert_eq!(ok, Ok(()));
                    (header, ok, caller_reply(response, &signed.request_id, body.len()))
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    whole.finish();

    let keys: Vec<String> = (0..200).map(|i| format!("client-key-{i:03}")).collect();
    let mut many = cfg.tenants[0].clone();
    many.client_key_hashes = keys.iter().map(|k| sha256(k.as_bytes())).collect();
    let dir = TenantDirectory::new(vec![many], None);
    let mut lookup = c.benchmark_group("key_lookup");
    for (name, key) in [
        ("first", "client-key-000"),
        ("last", "client-key-199"),
        ("near_miss", "client-key-19"),
        ("unknown", "zzzzzzzzzzzzzz"),
    ] {
        lookup.bench_function(name, |b| b.iter(|| dir.by_key(black_box(key.as_bytes())).is_some()));
    }
    lookup.finish();
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

criterion_group!(request_path_benches, benches);
criterion_main!(request_path_benches);
