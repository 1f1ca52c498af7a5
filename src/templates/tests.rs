//! The built-in template files parse, validate, and their bootstraps really run.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

fn builtins() -> Vec<(&'static str, TemplateSpec)> {
    BUILTIN
        .iter()
        .map(|(file, text)| {
            let spec = TemplateSpec::from_yaml(file, text).unwrap_or_else(|e| panic!("{e}"));
            (*file, spec)
        })
        .collect()
}

/// A scratch HOME removed when the test ends.
struct TempHome(PathBuf);

impl TempHome {
    fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("devpocket-{label}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp home");
        Self(dir)
    }
}

impl Drop for TempHome {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `script` with /bin/sh as an environment would: a bare environment, HOME set,
/// and only the programs in `bin` (see `fake_bin`) on the PATH.
fn run_sh(script: &str, home: &Path, bin: &Path) -> std::process::Output {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .env_clear()
        .env("PATH", bin)
        .env("HOME", home)
        .output()
        .expect("run sh")
}

/// The tools a bootstrap checks (`check TOOL ARGS…`).
fn checked_tools(bootstrap: &str) -> Vec<String> {
    bootstrap
        .lines()
        .filter_map(|l| l.trim().strip_prefix("check ")?.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// A directory for the PATH with the host's basic utilities the bootstraps use and a
/// stand-in for each of `tools` that answers (or fails, when `broken`): the bootstraps
/// are checked here, not the host's packages.
fn fake_bin(home: &Path, tools: &[String], broken: Option<&str>) -> PathBuf {
    let bin = home.join(".test-bin");
    let _ = std::fs::remove_dir_all(&bin);
    std::fs::create_dir_all(&bin).expect("bin");
    for util in [
        "mkdir", "cat", "grep", "head", "tr", "cut", "chmod", "mv", "rm",
    ] {
        let real = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(util))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no {util} on this host"));
        std::os::unix::fs::symlink(real, bin.join(util)).expect("link");
    }
    for tool in tools {
        let status = if broken == Some(tool.as_str()) { 1 } else { 0 };
        let path = bin.join(tool);
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho '{tool} stand-in'\nexit {status}\n"),
        )
        .expect("tool");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
    }
    bin
}

/// `==> [STEP/TOTAL] Name` lines, parsed.
fn markers(output: &str) -> Vec<(u32, u32, String)> {
    output
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("==> [")?;
            let (counts, name) = rest.split_once("] ")?;
            let (step, total) = counts.split_once('/')?;
            Some((step.parse().ok()?, total.parse().ok()?, name.to_owned()))
        })
        .collect()
}

#[test]
fn builtin_files_parse_validate_and_are_named_after_their_file() {
    let specs = builtins();
    assert_eq!(specs.len(), 5);
    for (file, spec) in &specs {
        assert_eq!(format!("{}.yaml", spec.name), *file);
        assert!(is_builtin(&spec.name));
        assert_eq!(spec.status, Status::Active);
        for key in ["cpu", "memory", "storage"] {
            assert!(
                spec.default_resources.contains_key(key),
                "{file} lacks {key}"
            );
        }
        assert!(!spec.packages.is_empty(), "{file} has no packages");
    }
    assert!(!is_builtin("perl"));
}

#[test]
fn builtin_bootstraps_run_offline_print_stages_and_lay_out_the_home() {
    for (file, spec) in builtins() {
        let home = TempHome::new(&spec.name);
        let tools = checked_tools(&spec.bootstrap);
        assert!(tools.len() >= 4, "{file} checks {tools:?}");
        let bin = fake_bin(&home.0, &tools, None);
        let started = std::time::Instant::now();
        let out = run_sh(&spec.bootstrap, &home.0, &bin);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{file}: exit {:?}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(started.elapsed().as_secs() < 10, "{file} is slow");

        let found = markers(&stdout);
        let total = found.first().map(|m| m.1).expect("stage markers");
        assert!((4..=5).contains(&total), "{file}: {total} stages");
        let steps: Vec<u32> = found.iter().map(|m| m.0).collect();
        assert_eq!(steps, (1..=total).collect::<Vec<_>>(), "{file}\n{stdout}");
        assert!(found.iter().all(|m| m.1 == total && !m.2.trim().is_empty()));
        // Every line that looks like a marker is a well-formed one.
        let lookalikes = stdout.lines().filter(|l| l.starts_with("==>")).count();
        assert_eq!(lookalikes, found.len(), "{file}\n{stdout}");

        let tmux = std::fs::read_to_string(home.0.join(".tmux.conf")).expect("tmux.conf");
        for line in [
            "set -g mouse on",
            "set -g history-limit 50000",
            "set -g default-terminal \"screen-256color\"",
        ] {
            assert!(tmux.contains(line), "{file}: tmux.conf lacks {line}");
        }
        let workspace = home.0.join("workspace");
        assert!(workspace.join("README.md").is_file(), "{file}");
        let files = std::fs::read_dir(&workspace).expect("workspace").count();
        assert!(files >= 2, "{file}: no starter file");

        // env.sh exports exactly the template's variables.
        for (key, value) in &spec.environment_variables {
            let probe = format!(". \"$HOME/.devpocket/env.sh\" && printf '%s' \"${key}\"");
            let out = run_sh(&probe, &home.0, &bin);
            assert!(out.status.success(), "{file}: sourcing env.sh");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                *value,
                "{file}: {key}"
            );
        }

        // A second run (a resumed provisioning) succeeds and keeps the user's files.
        std::fs::write(workspace.join("README.md"), "mine").expect("edit");
        let again = run_sh(&spec.bootstrap, &home.0, &bin);
        assert!(again.status.success(), "{file}: second run");
        let readme = std::fs::read_to_string(workspace.join("README.md")).expect("readme");
        assert_eq!(readme, "mine", "{file}: overwrote the user's file");
        let profile = std::fs::read_to_string(home.0.join(".profile")).expect("profile");
        let hooks = profile.lines().filter(|l| l.contains("devpocket/env.sh"));
        assert_eq!(hooks.count(), 1, "{file}: {profile}");
    }
}

fn python_yaml() -> &'static str {
    BUILTIN[0].1
}

#[test]
fn a_builtin_bootstrap_fails_when_a_tool_is_missing_or_broken() {
    for (file, spec) in builtins() {
        let tools = checked_tools(&spec.bootstrap);
        let main = tools[0].clone();
        for broken in [false, true] {
            let home = TempHome::new(&spec.name);
            let others: Vec<String> = if broken {
                tools.clone()
            } else {
                tools.iter().filter(|t| **t != main).cloned().collect()
            };
            let bin = fake_bin(&home.0, &others, broken.then_some(main.as_str()));
            let out = run_sh(&spec.bootstrap, &home.0, &bin);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{file} ready without {main}");
            assert!(
                stderr.contains(&format!("cannot be ready without: {main} ")),
                "{file}: {stderr}"
            );
            // It stopped before laying out anything.
            assert!(!home.0.join("workspace").exists(), "{file}");
        }
    }
}

#[test]
fn a_bad_file_is_reported_with_its_file_and_field() {
    let cases = [
        ("cpu: \"1\"", "cpu: {cores: 1}", "default_resources.cpu"),
        ("name: python", "name: Python!", "name"),
        (
            "category: programming_language",
            "category: language",
            "category",
        ),
        ("status: active", "status: retired", "status"),
        ("name: python", "name: python\nflavour: mild", "flavour"),
        ("default_port: 8000", "default_port: 0", "default_port"),
        (
            "packages: [",
            "packages: [\"curl; rm -rf /\", ",
            "packages[0]",
        ),
    ];
    for (from, to, field) in cases {
        assert!(python_yaml().contains(from), "{from}");
        let text = python_yaml().replacen(from, to, 1);
        let err = TemplateSpec::from_yaml("custom/bad.yaml", &text)
            .expect_err(to)
            .to_string();
        assert!(err.contains("custom/bad.yaml"), "{err}");
        assert!(err.contains(&format!("field `{field}`:")), "{field}: {err}");
    }

    // YAML scalars in string maps are taken as written.
    let lenient = python_yaml().replacen("cpu: \"1\"", "cpu: 1", 1);
    let spec = TemplateSpec::from_yaml("lenient.yaml", &lenient).expect("plain scalar");
    assert_eq!(spec.default_resources["cpu"], "1");

    let missing = python_yaml()
        .split("\nbootstrap: |")
        .next()
        .expect("head")
        .to_owned();
    let err = TemplateSpec::from_yaml("x.yaml", &missing).expect_err("no bootstrap");
    assert!(
        err.to_string().contains("`bootstrap`: is required"),
        "{err}"
    );

    let err = TemplateSpec::from_yaml("y.yaml", "name: [unclosed").expect_err("syntax");
    assert!(err.to_string().contains("y.yaml"), "{err}");
}

#[test]
fn validation_rules() {
    let (_, base) = builtins().remove(0);
    let invalid = |edit: &dyn Fn(&mut TemplateSpec), field: &str| {
        let mut spec = base.clone();
        edit(&mut spec);
        let errors = spec.validate().expect_err(field);
        assert!(errors.fields.contains_key(field), "{field}: {errors}");
    };
    invalid(&|s| s.name = "a".into(), "name");
    invalid(&|s| s.name = "x".repeat(41), "name");
    invalid(&|s| s.name = "-python".into(), "name");
    invalid(&|s| s.name = uuid::Uuid::new_v4().to_string(), "name");
    invalid(&|s| s.display_name = " ".into(), "display_name");
    invalid(&|s| s.tags.push(String::new()), "tags[5]");
    invalid(&|s| s.docker_image = "python 3".into(), "docker_image");
    invalid(
        &|s| {
            s.environment_variables.insert("1BAD".into(), "x".into());
        },
        "environment_variables",
    );
    invalid(
        &|s| {
            s.environment_variables
                .insert("OK".into(), "two\nlines".into());
        },
        "environment_variables.OK",
    );
    invalid(
        &|s| s.icon_url = Some("javascript:alert(1)".into()),
        "icon_url",
    );
    invalid(&|s| s.packages.push("-oAPT::x".into()), "packages[8]");
    invalid(&|s| s.bootstrap = "\n".into(), "bootstrap");
    assert!(base.validate().is_ok());
}

#[test]
fn api_bodies_ignore_read_only_fields_and_name_bad_ones() {
    let (_, base) = builtins().remove(0);
    let Ok(Value::Object(mut body)) = serde_json::to_value(&base) else {
        panic!("object");
    };
    body.insert("id".into(), Value::from("ignored"));
    body.insert("usage_count".into(), Value::from(3));
    assert_eq!(TemplateSpec::from_json(body.clone()).expect("valid"), base);

    body.insert("tags".into(), serde_json::json!(["ok", 5]));
    match TemplateSpec::from_json(body).expect_err("bad tag") {
        ApiError::Validation(v) => assert!(v.fields.contains_key("tags[1]"), "{v}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_extra_directory_adds_and_replaces_templates() {
    let dir = TempHome::new("templates-dir");
    let custom = python_yaml()
        .replacen("name: python", "name: data-science", 1)
        .replacen("display_name: Python 3", "display_name: Data science", 1);
    std::fs::write(dir.0.join("data.yaml"), &custom).expect("write");
    let replaced = python_yaml().replacen("version: \"1.0.0\"", "version: \"2.0.0\"", 1);
    std::fs::write(dir.0.join("python.yml"), &replaced).expect("write");
    std::fs::write(dir.0.join("notes.txt"), "not a template").expect("write");

    let loaded = load_files(Some(&dir.0)).expect("load");
    let names: Vec<&str> = loaded.iter().map(|(_, s)| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "data-science",
            "golang",
            "nodejs",
            "python",
            "rust",
            "ubuntu"
        ]
    );
    let python = loaded
        .iter()
        .find(|(_, s)| s.name == "python")
        .expect("python");
    assert_eq!(python.1.version, "2.0.0");
    assert!(python.0.ends_with("python.yml"));

    std::fs::write(dir.0.join("zz-copy.yaml"), &custom).expect("write");
    let err = load_files(Some(&dir.0)).expect_err("duplicate").to_string();
    assert!(
        err.contains("data.yaml") && err.contains("zz-copy.yaml"),
        "{err}"
    );

    let err = load_files(Some(&dir.0.join("absent")))
        .expect_err("absent")
        .to_string();
    assert!(err.contains("absent"), "{err}");
}
