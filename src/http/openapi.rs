//! The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json` (no auth).
//! `docs/openapi.yaml` is the source; `docs/openapi.json` is generated from it by
//! `scripts/gen-openapi.sh` (checked by `scripts/test-ops.sh`) and embedded here at build
//! time, so the daemon serves exactly the committed document.

use super::Body;
use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;

/// The document as JSON text.
pub const DOCUMENT: &str = include_str!("../../docs/openapi.json");

/// `200` with the document.
pub fn response() -> Response<Body> {
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(DOCUMENT.as_bytes())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::routes::{Route, ROUTES};
    use std::collections::BTreeSet;

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    fn documented() -> BTreeSet<(String, String)> {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("valid JSON");
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for m in METHODS {
                if item.get(m).is_some() {
                    out.insert((m.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn is_openapi_3_1() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
    }

    #[test]
    fn documents_exactly_the_routes_of_the_router() {
        let routes: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|Route { method, path }| (method.to_string(), path.to_string()))
            .collect();
        let docs = documented();
        let undocumented: Vec<_> = routes.difference(&docs).collect();
        let unserved: Vec<_> = docs.difference(&routes).collect();
        assert!(
            undocumented.is_empty() && unserved.is_empty(),
            "routes missing from docs/openapi.yaml: {undocumented:?}; documented but not in ROUTES: {unserved:?}"
        );
    }

    #[test]
    fn every_operation_documents_its_answers_as_json() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for m in METHODS {
                let Some(op) = item.get(m) else { continue };
                let responses = op["responses"].as_object().unwrap();
                assert!(!responses.is_empty(), "{m} {path} documents no response");
                for (status, r) in responses {
                    let r = match r.get("$ref").and_then(|r| r.as_str()) {
                        Some(p) => {
                            let name = p.rsplit('/').next().unwrap();
                            &doc["components"]["responses"][name]
                        }
                        None => r,
                    };
                    assert!(
                        r["content"]["application/json"]["schema"].is_object(),
                        "{m} {path} {status} has no JSON schema"
                    );
                }
            }
        }
    }
}
