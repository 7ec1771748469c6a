//! A typed client over the admin API (SPEC: Admin API), in the wire types of
//! `switchyard::api`: one method per endpoint, one error type, each error with its exit code.

use std::path::{Path, PathBuf};

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use switchyard::api::*;
use switchyard::core::color::Color;

use crate::exit::Exit;

/// Where the token is read from when neither RELEASECTL_TOKEN nor --token-file is given.
const DEFAULT_TOKEN_FILE: &str = "state/admin.token";

/// Why a call of the admin API did not give an answer to act on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot set up the HTTP client")]
    Setup(#[source] reqwest::Error),
    #[error(
        "cannot read the token file {} (set --token-file or RELEASECTL_TOKEN)",
        path.display()
    )]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the admin API at {admin} (is switchyard running? set --admin or RELEASECTL_ADMIN)")]
    Unreachable {
        admin: String,
        #[source]
        source: reqwest::Error,
    },
    /// 401 or 403.
    #[error(
        "the admin API at {admin} refused the token from {token}: {} (set --token-file or RELEASECTL_TOKEN)",
        answer.body.error
    )]
    Unauthorized {
        admin: String,
        /// Where the token came from: `RELEASECTL_TOKEN` or the file's path.
        token: String,
        answer: Box<ErrorAnswer>,
    },
    /// 409, 5xx: the daemon understood and said no (a smoke check failed, nothing to roll
    /// back, `--force` needed).
    #[error("{}", answer.body.error)]
    Refused { answer: Box<ErrorAnswer> },
    /// Any other 4xx: the request itself was wrong (an unknown service, an invalid config on
    /// reload).
    #[error("{}", answer.body.error)]
    Invalid { answer: Box<ErrorAnswer> },
    #[error("the admin API's answer to {request} broke off")]
    Read {
        request: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("unexpected answer from the admin API to {request}")]
    Decode {
        request: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A 4xx or 5xx answer of the admin API.
#[derive(Debug)]
pub struct ErrorAnswer {
    pub status: u16,
    /// The body; `error` is `HTTP <status>` when the body was not the API's error JSON.
    pub body: ErrorBody,
    /// The body as it came (printed under `--json`).
    pub raw: String,
}

impl ClientError {
    /// The error of a non-2xx answer, by its HTTP status.
    fn from_answer(client: &Client, status: u16, raw: String) -> ClientError {
        let body = serde_json::from_str::<ErrorBody>(&raw).unwrap_or_else(|_| ErrorBody {
            error: format!("HTTP {status}"),
            ..ErrorBody::default()
        });
        let answer = Box::new(ErrorAnswer { status, body, raw });
        match answer.status {
            401 | 403 => ClientError::Unauthorized {
                admin: client.admin.clone(),
                token: client.token_source.clone(),
                answer,
            },
            409 => ClientError::Refused { answer },
            400..=499 => ClientError::Invalid { answer },
            _ => ClientError::Refused { answer },
        }
    }

    pub fn exit(&self) -> Exit {
        match self {
            ClientError::Unreachable { .. } | ClientError::Unauthorized { .. } => Exit::Unreachable,
            ClientError::TokenFile { .. } | ClientError::Invalid { .. } => Exit::Usage,
            ClientError::Setup(_)
            | ClientError::Refused { .. }
            | ClientError::Read { .. }
            | ClientError::Decode { .. } => Exit::Refused,
        }
    }

    /// The admin API's error answer, when there was one.
    pub fn answer(&self) -> Option<&ErrorAnswer> {
        match self {
            ClientError::Unauthorized { answer, .. }
            | ClientError::Refused { answer }
            | ClientError::Invalid { answer } => Some(answer),
            _ => None,
        }
    }
}

/// A 2xx answer: decoded, and as it came (printed under `--json`).
#[derive(Debug)]
pub struct Reply<T> {
    pub body: T,
    pub raw: String,
}

pub struct Client {
    http: reqwest::Client,
    admin: String,
    token: String,
    /// Where `token` came from, for messages: `RELEASECTL_TOKEN` or the file's path.
    token_source: String,
}

impl Client {
    /// A client of the admin API at `admin` with the token of RELEASECTL_TOKEN, or else of
    /// `token_file` (default `state/admin.token`).
    pub fn new(admin: &str, token_file: Option<&Path>) -> Result<Client, ClientError> {
        let (token, token_source) = load_token(token_file)?;
        Ok(Client {
            http: reqwest::Client::builder()
                .build()
                .map_err(ClientError::Setup)?,
            admin: admin.to_string(),
            token,
            token_source,
        })
    }

    pub async fn status(&self) -> Result<Reply<StatusResponse>, ClientError> {
        self.call(Method::GET, "/v1/status", None::<&()>).await
    }

    pub async fn switch(&self, req: &SwitchRequest) -> Result<Reply<ReleaseResponse>, ClientError> {
        self.call(Method::POST, "/v1/switch", Some(req)).await
    }

    pub async fn rollback(
        &self,
        req: &RollbackRequest,
    ) -> Result<Reply<ReleaseResponse>, ClientError> {
        self.call(Method::POST, "/v1/rollback", Some(req)).await
    }

    pub async fn smoke(&self, req: &SmokeRequest) -> Result<Reply<SmokeResponse>, ClientError> {
        self.call(Method::POST, "/v1/smoke", Some(req)).await
    }

    /// Replaces the backends of `color` of `service`; answers with the new status.
    pub async fn set_backends(
        &self,
        service: &str,
        color: Color,
        req: &BackendsRequest,
    ) -> Result<Reply<StatusResponse>, ClientError> {
        let path = format!("/v1/services/{service}/backends/{color}");
        self.call(Method::PUT, &path, Some(req)).await
    }

    pub async fn history(&self, limit: usize) -> Result<Reply<HistoryResponse>, ClientError> {
        let path = format!("/v1/history?limit={limit}");
        self.call(Method::GET, &path, None::<&()>).await
    }

    pub async fn reload(&self) -> Result<Reply<ReloadResponse>, ClientError> {
        self.call(Method::POST, "/v1/reload", None::<&()>).await
    }

    pub async fn canary(&self, req: &CanaryRequest) -> Result<Reply<ReleaseResponse>, ClientError> {
        self.call(Method::POST, "/v1/canary", Some(req)).await
    }

    pub async fn promote(
        &self,
        req: &ServicesRequest,
    ) -> Result<Reply<ReleaseResponse>, ClientError> {
        self.call(Method::POST, "/v1/canary/promote", Some(req))
            .await
    }

    pub async fn abort(
        &self,
        req: &ServicesRequest,
    ) -> Result<Reply<ReleaseResponse>, ClientError> {
        self.call(Method::POST, "/v1/canary/abort", Some(req)).await
    }

    pub async fn certs(&self) -> Result<Reply<CertsResponse>, ClientError> {
        self.call(Method::GET, "/v1/certs", None::<&()>).await
    }

    pub async fn renew_certs(
        &self,
        req: &RenewRequest,
    ) -> Result<Reply<RenewResponse>, ClientError> {
        self.call(Method::POST, "/v1/certs/renew", Some(req)).await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Reply<T>, ClientError> {
        let url = format!("{}{path}", self.admin.trim_end_matches('/'));
        let request = format!("{method} {path}");
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                admin: self.admin.clone(),
                source,
            })?;
        let status = resp.status().as_u16();
        let raw = resp.text().await.map_err(|source| ClientError::Read {
            request: request.clone(),
            source,
        })?;
        if !(200..300).contains(&status) {
            return Err(ClientError::from_answer(self, status, raw));
        }
        match serde_json::from_str(&raw) {
            Ok(body) => Ok(Reply { body, raw }),
            Err(source) => Err(ClientError::Decode { request, source }),
        }
    }
}

/// The token and where it came from: RELEASECTL_TOKEN when set and not blank, else the
/// first of `token_file`, `state/admin.token`; trimmed.
fn load_token(token_file: Option<&Path>) -> Result<(String, String), ClientError> {
    if let Ok(t) = std::env::var("RELEASECTL_TOKEN") {
        if !t.trim().is_empty() {
            return Ok((t.trim().to_string(), "RELEASECTL_TOKEN".to_string()));
        }
    }
    let path = token_file.unwrap_or(Path::new(DEFAULT_TOKEN_FILE));
    std::fs::read_to_string(path)
        .map(|t| (t.trim().to_string(), path.display().to_string()))
        .map_err(|source| ClientError::TokenFile {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        Client {
            http: reqwest::Client::new(),
            admin: "http://127.0.0.1:9901".into(),
            token: "t".into(),
            token_source: "state/admin.token".into(),
        }
    }

    #[test]
    fn answers_map_to_exit_codes() {
        let c = client();
        let exit = |status, raw: &str| ClientError::from_answer(&c, status, raw.to_string()).exit();
        let body = r#"{"error":"no"}"#;
        assert_eq!(exit(401, body), Exit::Unreachable);
        assert_eq!(exit(403, body), Exit::Unreachable);
        assert_eq!(exit(409, body), Exit::Refused);
        assert_eq!(exit(400, body), Exit::Usage);
        assert_eq!(exit(404, body), Exit::Usage);
        assert_eq!(exit(500, body), Exit::Refused);
        assert_eq!(exit(502, "<html>bad gateway</html>"), Exit::Refused);
    }

    #[test]
    fn error_answers_keep_the_api_message_and_details() {
        let c = client();
        let e = ClientError::from_answer(
            &c,
            400,
            r#"{"error":"invalid config","errors":["route 1: no service x"]}"#.into(),
        );
        assert_eq!(e.to_string(), "invalid config");
        assert_eq!(e.answer().unwrap().body.errors, ["route 1: no service x"]);

        let e = ClientError::from_answer(&c, 502, "<html>bad gateway</html>".into());
        assert_eq!(e.to_string(), "HTTP 502");
        assert_eq!(e.answer().unwrap().raw, "<html>bad gateway</html>");

        let e = ClientError::from_answer(&c, 401, r#"{"error":"wrong token"}"#.into());
        assert_eq!(
            e.to_string(),
            "the admin API at http://127.0.0.1:9901 refused the token from state/admin.token: \
             wrong token (set --token-file or RELEASECTL_TOKEN)"
        );
    }
}
