//! What the fake reads from a droplet's user-data, as cloud-init would: a MIME
//! multipart archive, a bare `#cloud-config` document or a bare `#!` script. From
//! cloud-config it takes the first user (name, authorized keys), `ssh_authorized_keys`,
//! the pre-seeded ed25519 host key (`ssh_keys`), `mounts` and `packages`; shell parts
//! are run at first boot.

use base64::Engine;
use serde_norway::Value as Yaml;

#[derive(Debug, Default, Clone)]
pub struct UserData {
    pub user: Option<String>,
    pub authorized_keys: Vec<String>,
    pub host_key_private: Option<String>,
    pub host_key_public: Option<String>,
    /// (device, mount point) from `mounts`.
    pub mounts: Vec<(String, String)>,
    pub packages: Vec<String>,
    pub scripts: Vec<String>,
}

fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Splits `Name: value` header lines (with continuation lines) from the body.
fn split_headers(text: &str) -> (Vec<(String, String)>, String) {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut lines = text.split_inclusive('\n');
    let mut consumed = 0;
    for line in lines.by_ref() {
        consumed += line.len();
        let trimmed = line.trim_end_matches(['\r', '\n']);
        if trimmed.is_empty() {
            break;
        }
        if trimmed.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(trimmed.trim());
            }
            continue;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    (headers, text[consumed.min(text.len())..].to_owned())
}

fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// The parts of a user-data blob as (content type, text).
fn parts(raw: &str) -> Result<Vec<(String, String)>, String> {
    if raw.starts_with("#cloud-config") {
        return Ok(vec![("text/cloud-config".into(), raw.to_owned())]);
    }
    if raw.starts_with("#!") {
        return Ok(vec![("text/x-shellscript".into(), raw.to_owned())]);
    }
    let (headers, body) = split_headers(raw);
    let content_type = header_value(&headers, "Content-Type")
        .ok_or("user-data is neither #cloud-config, #! nor MIME")?;
    if !content_type.starts_with("multipart/") {
        return Err(format!("unsupported user-data content type {content_type}"));
    }
    let boundary = boundary(content_type).ok_or("multipart user-data without a boundary")?;
    let delimiter = format!("--{boundary}");
    let mut out = Vec::new();
    for chunk in body.split(&delimiter).skip(1) {
        if chunk.starts_with("--") {
            break;
        }
        let chunk = chunk
            .strip_prefix("\r\n")
            .or_else(|| chunk.strip_prefix('\n'));
        let (headers, body) = split_headers(chunk.unwrap_or_default());
        let kind = header_value(&headers, "Content-Type")
            .unwrap_or("text/plain")
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let body = match header_value(&headers, "Content-Transfer-Encoding") {
            Some(enc) if enc.eq_ignore_ascii_case("base64") => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(body.split_whitespace().collect::<String>())
                    .map_err(|e| format!("bad base64 part: {e}"))?;
                String::from_utf8(bytes).map_err(|e| format!("part is not UTF-8: {e}"))?
            }
            _ => body
                .strip_suffix("\r\n")
                .or_else(|| body.strip_suffix('\n'))
                .unwrap_or(&body)
                .to_owned(),
        };
        out.push((kind, body));
    }
    Ok(out)
}

fn strings(value: &Yaml) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

impl UserData {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut data = UserData::default();
        for (kind, text) in parts(raw)? {
            match kind.as_str() {
                "text/cloud-config" => data.cloud_config(&text)?,
                "text/x-shellscript" => data.scripts.push(text),
                _ => {}
            }
        }
        Ok(data)
    }

    fn cloud_config(&mut self, text: &str) -> Result<(), String> {
        let doc: Yaml =
            serde_norway::from_str(text).map_err(|e| format!("cloud-config is not YAML: {e}"))?;
        for user in doc["users"].as_sequence().into_iter().flatten() {
            if self.user.is_none()
                && let Some(name) = user["name"].as_str()
            {
                self.user = Some(name.to_owned());
                self.authorized_keys
                    .extend(strings(&user["ssh_authorized_keys"]));
            }
        }
        self.authorized_keys
            .extend(strings(&doc["ssh_authorized_keys"]));
        if let Some(key) = doc["ssh_keys"]["ed25519_private"].as_str() {
            self.host_key_private = Some(key.to_owned());
        }
        if let Some(key) = doc["ssh_keys"]["ed25519_public"].as_str() {
            self.host_key_public = Some(key.trim().to_owned());
        }
        for entry in doc["mounts"].as_sequence().into_iter().flatten() {
            let fields = strings(entry);
            if let [device, point, ..] = fields.as_slice() {
                self.mounts.push((device.clone(), point.clone()));
            }
        }
        self.packages.extend(strings(&doc["packages"]));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_with_cloud_config_and_script() {
        let raw = "Content-Type: multipart/mixed; boundary=\"XX\"\nMIME-Version: 1.0\n\n\
                   --XX\nContent-Type: text/cloud-config; charset=\"utf-8\"\n\n\
                   #cloud-config\nusers:\n  - name: dev\n    ssh_authorized_keys: [\"ssh-ed25519 AAA k\"]\n\
                   ssh_keys:\n  ed25519_private: |\n    PRIVATE\n  ed25519_public: ssh-ed25519 BBB h\n\
                   mounts:\n  - [/dev/disk/by-id/scsi-0DO_Volume_v1, /home/dev, ext4, defaults]\n\
                   packages: [git]\n\
                   --XX\nContent-Type: text/x-shellscript\n\n#!/bin/sh\necho hi\n--XX--\n";
        let data = UserData::parse(raw).unwrap();
        assert_eq!(data.user.as_deref(), Some("dev"));
        assert_eq!(data.authorized_keys, vec!["ssh-ed25519 AAA k"]);
        assert_eq!(data.host_key_private.as_deref(), Some("PRIVATE\n"));
        assert_eq!(data.mounts[0].1, "/home/dev");
        assert_eq!(data.packages, vec!["git"]);
        assert_eq!(data.scripts, vec!["#!/bin/sh\necho hi"]);
    }
}
