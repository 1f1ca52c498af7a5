//! Creating the cluster on first use: its password, `initdb`, the application
//! database, the runtime configuration, and the owner-only files they live in.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::unistd::Uid;

use super::{
    DATABASE, Durability, EmbeddedError, EmbeddedPostgres, PORT, RunAs, SUPERUSER, describe, io_err,
};

impl EmbeddedPostgres {
    pub(super) fn load_or_create_password(&self) -> Result<String, EmbeddedError> {
        use rand::TryRng;
        match fs::read_to_string(&self.password_file) {
            Ok(p) if !p.trim().is_empty() => return Ok(p.trim().to_owned()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&self.password_file)(e)),
        }
        if self.pgdata.join("PG_VERSION").exists() {
            return Err(EmbeddedError::Setup(format!(
                "{} is missing but the cluster in {} exists: restore the file or remove the cluster",
                self.password_file.display(),
                self.pgdata.display()
            )));
        }
        let mut bytes = [0u8; 24];
        rand::rngs::SysRng.try_fill_bytes(&mut bytes).map_err(|e| {
            EmbeddedError::Setup(format!("the system's random number generator failed: {e}"))
        })?;
        let password = hex::encode(bytes);
        write_private(&self.password_file, password.as_bytes(), None)?;
        Ok(password)
    }

    pub(super) fn init_cluster(&self) -> Result<(), EmbeddedError> {
        mkdir_private(&self.pgdata, self.run_as.as_ref())?;
        // initdb reads the superuser password from a file its user can read.
        let pwfile = self
            .pgdata
            .parent()
            .unwrap_or(Path::new("/"))
            .join("postgres.initpw");
        write_private(
            &pwfile,
            self.password.expose().as_bytes(),
            self.run_as.as_ref(),
        )?;
        let out = self
            .pg_command("initdb")
            .arg("-D")
            .arg(&self.pgdata)
            .args([
                "-U",
                SUPERUSER,
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output();
        let _ = fs::remove_file(&pwfile);
        let out = out.map_err(io_err(&self.bin_dir))?;
        if !out.status.success() {
            // Leave nothing half-made behind: the next start tries again from scratch.
            let _ = fs::remove_dir_all(&self.pgdata);
            return Err(EmbeddedError::Command {
                action: "initdb".into(),
                detail: describe(&out),
            });
        }
        let conf = self.pgdata.join("postgresql.conf");
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(io_err(&conf))?;
        writeln!(
            file,
            "\n# DevPocket: settings rewritten at every start\ninclude_if_exists = 'devpocket.conf'"
        )
        .map_err(io_err(&conf))?;
        tracing::info!(pgdata = %self.pgdata.display(), "embedded PostgreSQL cluster created");
        self.start_once_to_create_database()
    }

    /// Creates the application database right after initdb.
    fn start_once_to_create_database(&self) -> Result<(), EmbeddedError> {
        self.write_runtime_config()?;
        let log = self.pgdata.join("server.log");
        let start = self
            .pg_command("pg_ctl")
            .arg("start")
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-s"])
            .output()
            .map_err(io_err(&self.bin_dir))?;
        if !start.status.success() {
            return Err(EmbeddedError::Command {
                action: "first start of the embedded PostgreSQL".into(),
                detail: describe(&start),
            });
        }
        let create = self
            .pg_command("createdb")
            .env("PGPASSWORD", self.password.expose())
            .args(["-h"])
            .arg(&self.socket_dir)
            .args(["-p", &PORT.to_string(), "-U", SUPERUSER, DATABASE])
            .output();
        let stop = self
            .pg_command("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-m", "fast", "-w", "-s"])
            .output();
        let create = create.map_err(io_err(&self.bin_dir))?;
        if !create.status.success() {
            return Err(EmbeddedError::Command {
                action: format!("creating the database {DATABASE}"),
                detail: describe(&create),
            });
        }
        stop.map_err(io_err(&self.bin_dir))?;
        Ok(())
    }

    pub(super) fn write_runtime_config(&self) -> Result<(), EmbeddedError> {
        mkdir_private(&self.socket_dir, self.run_as.as_ref())?;
        let mut conf = format!(
            "listen_addresses = ''\n\
             unix_socket_directories = '{}'\n\
             unix_socket_permissions = 0700\n\
             port = {PORT}\n\
             max_connections = 300\n\
             password_encryption = 'scram-sha-256'\n",
            self.socket_dir.display().to_string().replace('\'', "''")
        );
        if self.durability == Durability::Ephemeral {
            conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        write_private(
            &self.pgdata.join("devpocket.conf"),
            conf.as_bytes(),
            self.run_as.as_ref(),
        )
    }
}

fn mkdir_private(dir: &Path, owner: Option<&RunAs>) -> Result<(), EmbeddedError> {
    use std::os::unix::fs::MetadataExt;
    if dir.exists() {
        // The socket directory may live in a shared temporary directory: refuse one
        // that somebody else made.
        let meta = fs::metadata(dir).map_err(io_err(dir))?;
        let me = Uid::effective().as_raw();
        let expected = owner.map_or(me, |o| o.uid.as_raw());
        if meta.uid() != expected && meta.uid() != me {
            return Err(EmbeddedError::Setup(format!(
                "{} belongs to another user; remove it or choose another DEVPOCKET_DATA_DIR",
                dir.display()
            )));
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    } else {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
    }
    if let Some(owner) = owner {
        nix::unistd::chown(dir, Some(owner.uid), Some(owner.gid))
            .map_err(|e| io_err(dir)(e.into()))?;
    }
    Ok(())
}

fn write_private(path: &Path, contents: &[u8], owner: Option<&RunAs>) -> Result<(), EmbeddedError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(contents).map_err(io_err(&tmp))?;
    if let Some(owner) = owner {
        nix::unistd::chown(&tmp, Some(owner.uid), Some(owner.gid))
            .map_err(|e| io_err(&tmp)(e.into()))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path))
}
