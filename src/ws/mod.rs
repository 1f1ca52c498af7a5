//! The WebSocket protocols as types: the frames of the terminal
//! (`/api/v1/ws/terminal/{id}`) and of the provisioning log
//! (`/api/v1/ws/logs/{id}`), each a `#[serde(tag = "type")]` enum for what the client
//! sends and one for what the server sends, with the protocol's description for the
//! OpenAPI document next to them. The routes (`routes::ws_terminal`,
//! `routes::ws_logs`) speak only these types.

pub mod log_frames;
pub mod terminal_frames;

/// The JSON examples of a protocol description's table rows (`| \`{…}\` | … |`),
/// for the tests that check them against the types.
#[cfg(test)]
fn examples(protocol: &str, heading: &str) -> Vec<serde_json::Value> {
    let section = protocol.split(heading).nth(1).unwrap_or_default();
    let section = section.split("\n\n").nth(1).unwrap_or_default();
    section
        .lines()
        .filter_map(|row| row.strip_prefix("| `"))
        .map(|row| &row[..row.find("` |").unwrap_or(row.len())])
        .map(|json| serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}")))
        .collect()
}
