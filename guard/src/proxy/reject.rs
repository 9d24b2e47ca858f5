//! Every answer proxyguard gives instead of the upstream's: a status, a stable reason code for
//! audit and metrics, and a message, rendered in OpenAI's error shape so SDKs surface it as-is.
//!
//! Messages name headers, rules and limits, never a header value, key or body text (threat 14).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: StatusCode,
    /// Stable, machine-readable; the `code` of the error body and the `reason` of the audit line.
    pub reason: &'static str,
    pub message: String,
    /// Seconds, for 429.
    pub retry_after: Option<u64>,
    /// The connection must not carry another request after this answer.
    pub close_connection: bool,
}

impl Reject {
    pub fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Reject {
        Reject {
            status,
            reason,
            message: message.into(),
            retry_after: None,
            close_connection: false,
        }
    }

    /// OpenAI's `type` for the status, so clients classify the error the usual way.
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            502..=504 => "api_error",
            _ => "invalid_request_error",
        }
    }

    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let body = json!({
            "error": { "message": self.message, "type": self.kind(), "code": self.reason }
        });
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.close_connection {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn renders_the_openai_error_shape() {
        let mut reject = Reject::new(StatusCode::TOO_MANY_REQUESTS, "rate_key", "slow down");
        reject.retry_after = Some(3);
        let response = reject.to_response();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["error"]["type"], "rate_limit_error");
        assert_eq!(value["error"]["code"], "rate_key");
        assert_eq!(value["error"]["message"], "slow down");
    }
}
