//! MQTT subscription. (Being written; the config accepts only a name until it lands.)

use super::InputContext;
use ferrule_config::Invalid;
use serde::Deserialize;

/// Configuration of one MQTT subscription input.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Input name, for counters and logs.
    pub name: String,
}

impl MqttConfig {
    /// Semantic checks `check-config` reports with the line of `key`.
    pub fn validate(&self, key: &str, bad: &mut Vec<Invalid>) {
        if self.name.is_empty() {
            bad.push(Invalid::new(format!("{key}.name"), "must not be empty"));
        }
    }
}

/// Runs the input until shutdown.
pub async fn run(cfg: MqttConfig, ctx: InputContext) {
    ctx.bad(
        "not_implemented",
        format!("input {} is not available in this build", cfg.name),
    );
}
