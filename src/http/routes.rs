//! The table of the API router's routes (method, path template): what
//! [`super::api`] serves, what `docs/openapi.yaml` must document (a unit test in
//! [`super::openapi`] holds them equal) and what the integration tests call on a live
//! daemon (every route served, unknown paths 404). A route added to the router goes here
//! and into the OpenAPI document.

/// One route: an HTTP method and a path template in OpenAPI syntax (`{id}` = one segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
}

const fn r(method: &'static str, path: &'static str) -> Route {
    Route { method, path }
}

/// Every route of the API port.
pub const ROUTES: &[Route] = &[
    r("GET", "/healthz"),
    r("GET", "/readyz"),
    r("GET", "/openapi.json"),
    r("GET", "/v1/challenges/{id}"),
    r("DELETE", "/v1/challenges/{id}"),
    r("POST", "/v1/challenges/{id}/decision"),
    r("POST", "/v1/challenges/{id}/otp"),
    r("POST", "/v1/challenges/{id}/sms"),
    r("POST", "/v1/challenges/{id}/offline"),
    r("GET", "/v1/devices/{device_id}/challenges"),
];

impl Route {
    /// The path with every `{param}` replaced by `value`.
    pub fn with_params(&self, value: &str) -> String {
        let mut out = String::with_capacity(self.path.len() + value.len());
        let mut rest = self.path;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            match rest[start..].find('}') {
                Some(end) => {
                    out.push_str(value);
                    rest = &rest[start + end + 1..];
                }
                None => {
                    rest = &rest[start..];
                    break;
                }
            }
        }
        out.push_str(rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_filled_in() {
        assert_eq!(
            r("POST", "/v1/challenges/{id}/otp").with_params("c-1"),
            "/v1/challenges/c-1/otp"
        );
        assert_eq!(r("GET", "/healthz").with_params("x"), "/healthz");
    }

    #[test]
    fn no_route_is_listed_twice() {
        for (i, a) in ROUTES.iter().enumerate() {
            assert!(
                !ROUTES[i + 1..].contains(a),
                "{} {} listed twice",
                a.method,
                a.path
            );
        }
    }
}
