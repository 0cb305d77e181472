//! What the AWS providers (SES, SNS) share: their credentials and signing
//! a request with Signature Version 4 (the `aws-sigv4` crate).

use std::time::SystemTime;

use secrecy::{ExposeSecret, SecretString};

use super::{ConfigError, Context, Credential, ErrorClass, SendError};

/// An access key and where it signs for.
pub(crate) struct AwsKey {
    access_key_id: String,
    secret: SecretString,
    region: String,
    service: &'static str,
}

impl std::fmt::Debug for AwsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKey")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl AwsKey {
    pub(crate) fn new(
        field: &str,
        access_key_id: &str,
        secret: &Credential,
        region: &str,
        service: &'static str,
        cx: &Context,
    ) -> Result<AwsKey, ConfigError> {
        if access_key_id.len() < 16 || !access_key_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ConfigError::new(
                format!("{field}.access_key_id"),
                "not an AWS access key id",
            ));
        }
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(ConfigError::new(
                format!("{field}.region"),
                "not an AWS region (us-east-1)",
            ));
        }
        Ok(AwsKey {
            access_key_id: access_key_id.to_owned(),
            secret: secret.resolve(&format!("{field}.secret_access_key"), cx)?,
            region: region.to_owned(),
            service,
        })
    }

    pub(crate) fn region(&self) -> &str {
        &self.region
    }

    /// The signature headers for a POST of `body` to `url` with these
    /// headers (each of which is signed).
    pub(crate) fn sign(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Vec<(String, String)>, SendError> {
        use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
        let identity: aws_smithy_runtime_api::client::identity::Identity =
            aws_credential_types::Credentials::new(
                &self.access_key_id,
                self.secret.expose_secret(),
                None,
                None,
                "sojourn",
            )
            .into();
        let fail = |e: &dyn std::fmt::Display| {
            SendError::new(ErrorClass::Invalid, format!("signing the request: {e}"))
        };
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(self.service)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| fail(&e))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            url,
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .map_err(|e| fail(&e))?;
        let (instructions, _) = sign(signable, &params).map_err(|e| fail(&e))?.into_parts();
        Ok(instructions
            .headers()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }
}

/// AWS's error type (`x-amzn-ErrorType`, or `<Code>` of a query API's
/// XML) as a class.
pub(crate) fn class_of(code: &str, status: u16) -> ErrorClass {
    match code {
        "Throttling"
        | "ThrottlingException"
        | "TooManyRequestsException"
        | "LimitExceededException" => ErrorClass::RateLimited,
        "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "AccessDenied"
        | "AccessDeniedException"
        | "AuthorizationError"
        | "AccountSuspendedException"
        | "SendingPausedException"
        | "MailFromDomainNotVerifiedException"
        | "ExpiredToken"
        | "ExpiredTokenException" => ErrorClass::Auth,
        "InternalError"
        | "InternalFailure"
        | "ServiceUnavailable"
        | "InternalServiceErrorException" => ErrorClass::Unavailable,
        _ if status >= 500 => ErrorClass::Unavailable,
        _ if status == 429 => ErrorClass::RateLimited,
        _ => ErrorClass::Rejected,
    }
}

/// The text of `<tag>…</tag>` in a query API's XML answer (the first).
pub(crate) fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&close)? + start;
    Some(&xml[start..end])
}
