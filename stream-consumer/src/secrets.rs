//! Secrets read once at start-up from AWS Secrets Manager, so that they need not sit in the
//! function's environment (the webhook's signing secret: `EDGE_INVALIDATE_WEBHOOK_SECRET_ARN`).

use aws_smithy_types::error::display::DisplayErrorContext;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("reading secret {id} from Secrets Manager: {message}")]
    Read { id: String, message: String },
    #[error("secret {id} has no SecretString (a binary secret, or an empty one)")]
    NoString { id: String },
}

/// The `SecretString` of secret `id` (an ARN or a name), current version. The error names
/// the secret, never its value.
pub async fn secret_string(
    client: &aws_sdk_secretsmanager::Client,
    id: &str,
) -> Result<String, SecretError> {
    let output = client
        .get_secret_value()
        .secret_id(id)
        .send()
        .await
        .map_err(|e| SecretError::Read {
            id: id.to_string(),
            message: DisplayErrorContext(e).to_string(),
        })?;
    match output.secret_string {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(SecretError::NoString { id: id.to_string() }),
    }
}
