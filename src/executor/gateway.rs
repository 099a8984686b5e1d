//! `gateway.flip`: sets a route's backend weights through a gateway's admin
//! API; `undo` puts back the weights read before the change.
//!
//! The plan names a gateway; its admin URL comes only from configuration
//! (`OPSLOOP_GATEWAYS=name=url,…`), so no plan, human or LLM, can make the
//! executor call anywhere else. The admin API, documented in
//! docs/DECISIONS.md:
//! - `GET  {admin}/routes/{route}` → `{"route": "/checkout", "weights": {"blue": 90, "green": 10}}`
//! - `PUT  {admin}/routes/{route}/weights` with `{"weights": {…}}` → the
//!   route as now set.
//!
//! `{route}` is one percent-encoded path segment (`/checkout` → `%2Fcheckout`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use reqwest::Url;
use serde_json::{Value, json};

use super::adapter::{Action, Adapter, BoxFuture, ExecError, Rehearsal, not_mine, refuses};
use crate::contract::plan::FlipParams;

/// One allowlisted gateway: `name=http://host:port/admin-base`.
#[derive(Debug, Clone)]
pub struct GatewayEntry {
    pub name: String,
    pub admin_url: Url,
}

impl FromStr for GatewayEntry {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, url) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected name=url"))?;
        let name = name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(format!("{s:?}: the gateway needs a name"));
        }
        let admin_url = Url::parse(url.trim()).map_err(|e| format!("{s:?}: {e}"))?;
        if !["http", "https"].contains(&admin_url.scheme()) || admin_url.cannot_be_a_base() {
            return Err(format!("{s:?}: the admin URL must be http(s)"));
        }
        Ok(GatewayEntry {
            name: name.to_string(),
            admin_url,
        })
    }
}

pub struct GatewayAdapter {
    gateways: BTreeMap<String, Url>,
    token_file: Option<PathBuf>,
    http: reqwest::Client,
}

impl GatewayAdapter {
    pub fn new(gateways: &[GatewayEntry], token_file: Option<PathBuf>) -> GatewayAdapter {
        GatewayAdapter {
            gateways: gateways
                .iter()
                .map(|g| (g.name.clone(), g.admin_url.clone()))
                .collect(),
            token_file,
            // Default settings cannot fail to build (reqwest's own
            // `Client::new` makes the same assumption).
            http: crate::http_client::http_client()
                .build()
                .expect("an HTTP client with default settings"),
        }
    }

    fn route_url(&self, params: &FlipParams, tail: Option<&str>) -> Result<Url, ExecError> {
        let (gateway, route) = (params.gateway.as_str(), params.route.as_str());
        if gateway.is_empty() || route.is_empty() {
            return Err(ExecError::refused(
                "gateway.flip needs gateway and route",
                json!({}),
            ));
        }
        let Some(base) = self.gateways.get(gateway) else {
            return Err(ExecError::refused(
                format!("gateway {gateway:?} is not in OPSLOOP_GATEWAYS"),
                json!({"known": self.gateways.keys().collect::<Vec<_>>()}),
            ));
        };
        let mut url = base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|_| ExecError::refused("the admin URL cannot take a path", json!({})))?;
            path.pop_if_empty().push("routes").push(route);
            if let Some(tail) = tail {
                path.push(tail);
            }
        }
        Ok(url)
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
        doing: &str,
    ) -> Result<Value, ExecError> {
        let mut request = request.timeout(timeout);
        if let Some(path) = &self.token_file {
            let token = tokio::fs::read_to_string(path).await.map_err(|e| {
                ExecError::refused(format!("reading the gateway token file: {e}"), json!({}))
            })?;
            request = request.bearer_auth(token.trim());
        }
        let response = request
            .send()
            .await
            .map_err(|e| ExecError::new(format!("{doing}: {e}"), json!({})))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let capped: String = body.chars().take(2000).collect();
        if !status.is_success() {
            let detail = json!({"http_status": status.as_u16(), "body": capped});
            let message = format!("{doing}: the gateway answered {status}");
            // A refusal stays a refusal; overload and server trouble may pass.
            return Err(if refuses(status.as_u16()) {
                ExecError::refused(message, detail)
            } else {
                ExecError::new(message, detail)
            });
        }
        serde_json::from_str(&body).map_err(|e| {
            ExecError::new(
                format!("{doing}: unreadable answer: {e}"),
                json!({"body": capped}),
            )
        })
    }

    async fn read_weights(
        &self,
        params: &FlipParams,
        timeout: Duration,
    ) -> Result<Value, ExecError> {
        let url = self.route_url(params, None)?;
        let route = self
            .send(self.http.get(url), timeout, "reading the route")
            .await?;
        match route.get("weights") {
            Some(w) if w.is_object() => Ok(w.clone()),
            _ => Err(ExecError::new(
                "the gateway's route has no weights object",
                json!({"route": route}),
            )),
        }
    }

    /// Sets `weights` and checks the gateway now reports exactly them.
    async fn set_weights(
        &self,
        params: &FlipParams,
        weights: &Value,
        timeout: Duration,
    ) -> Result<Value, ExecError> {
        let url = self.route_url(params, Some("weights"))?;
        let request = self.http.put(url).json(&json!({"weights": weights}));
        let route = self.send(request, timeout, "setting the weights").await?;
        if route.get("weights") != Some(weights) {
            return Err(ExecError::new(
                "the gateway did not report the weights just set",
                json!({"asked": weights, "answered": route}),
            ));
        }
        Ok(json!({"weights": weights}))
    }
}

fn flip_of(action: &Action) -> Result<&FlipParams, ExecError> {
    match action {
        Action::GatewayFlip(params) => Ok(params),
        other => Err(not_mine(Action::GATEWAY_FLIP, other)),
    }
}

impl Adapter for GatewayAdapter {
    fn action(&self) -> &'static str {
        "gateway.flip"
    }

    /// Setting the same weights twice leaves the same state.
    fn idempotent(&self) -> bool {
        true
    }

    fn snapshot<'a>(
        &'a self,
        action: &'a Action,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Option<Value>, ExecError>> {
        Box::pin(async move {
            let params = flip_of(action)?;
            let weights = self.read_weights(params, timeout).await?;
            Ok(Some(json!({"weights": weights})))
        })
    }

    fn run<'a>(
        &'a self,
        action: &'a Action,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Value, ExecError>> {
        Box::pin(async move {
            let params = flip_of(action)?;
            let Some(weights) = &params.weights else {
                return Err(ExecError::refused("gateway.flip needs weights", json!({})));
            };
            self.set_weights(params, &json!(weights), timeout).await
        })
    }

    /// The route's weights now against the ones the step sets; the
    /// gateway's admin API has no dry run, so nothing is written.
    fn dry_run<'a>(
        &'a self,
        action: &'a Action,
        _targets: &'a crate::gatekeeper::targets::Targets,
        timeout: Duration,
    ) -> BoxFuture<'a, Rehearsal> {
        Box::pin(async move {
            let params = match flip_of(action) {
                Ok(params) => params,
                Err(e) => return Rehearsal::Failed(e),
            };
            let Some(target) = &params.weights else {
                return Rehearsal::Unavailable(
                    "an undo restores the weights read at execution; nothing to compare yet".into(),
                );
            };
            let current = match self.read_weights(params, timeout).await {
                Ok(current) => current,
                Err(e) => return Rehearsal::Failed(e),
            };
            let target = json!(target);
            Rehearsal::Ok(json!({
                "gateway": params.gateway,
                "route": params.route,
                "current": current,
                "target": target,
                "changes": current != target,
            }))
        })
    }

    fn restore<'a>(
        &'a self,
        action: &'a Action,
        before: &'a Value,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Value, ExecError>> {
        Box::pin(async move {
            let params = flip_of(action)?;
            let Some(weights) = before.get("weights").filter(|w| w.is_object()) else {
                return Err(ExecError::refused(
                    "the recorded state has no weights",
                    json!({"before": before}),
                ));
            };
            let mut done = self.set_weights(params, weights, timeout).await?;
            done["restored"] = json!(true);
            Ok(done)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_entries_are_name_equals_http_url() {
        let g: GatewayEntry = "edge=http://127.0.0.1:9901/admin".parse().unwrap();
        assert_eq!(g.name, "edge");
        assert!("edge".parse::<GatewayEntry>().is_err());
        assert!("=http://x".parse::<GatewayEntry>().is_err());
        assert!("edge=file:///etc/passwd".parse::<GatewayEntry>().is_err());
        assert!("edge=not a url".parse::<GatewayEntry>().is_err());
    }

    #[test]
    fn a_route_is_one_encoded_segment_under_the_configured_url_only() {
        let adapter = GatewayAdapter::new(
            &["edge=http://127.0.0.1:9901/admin/".parse().unwrap()],
            None,
        );
        let url = adapter
            .route_url(
                &serde_json::from_value(json!({"gateway": "edge", "route": "/checkout/../x?y"}))
                    .unwrap(),
                Some("weights"),
            )
            .unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9901/admin/routes/%2Fcheckout%2F..%2Fx%3Fy/weights"
        );
        let unknown = adapter.route_url(
            &serde_json::from_value(json!({"gateway": "http://evil", "route": "/"})).unwrap(),
            None,
        );
        assert!(!unknown.unwrap_err().is_retryable());
    }
}
