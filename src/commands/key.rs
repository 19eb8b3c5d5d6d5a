use std::process::ExitCode;

use anyhow::Context;
use proctor_recorder::keys::{fingerprint, load_public_key, public_key_pem};
use proctor_recorder::layout::Layout;
use serde_json::json;

use crate::cli::DataDirArgs;
use crate::config::Config;

pub fn show(location: DataDirArgs, as_json: bool) -> anyhow::Result<ExitCode> {
    let data_dir = match (location.data_dir, location.config) {
        (Some(dir), _) => dir,
        (None, Some(config)) => Config::load(&config)?.data_dir,
        (None, None) => anyhow::bail!("pass --data-dir or --config"),
    };
    let keys_dir = Layout::new(&data_dir).keys_dir();
    let key = load_public_key(&keys_dir).with_context(|| {
        format!(
            "no signing key in {}: it is created when the recorder first starts (proctor up or proctor generate)",
            data_dir.display()
        )
    })?;
    let pem = public_key_pem(&key);
    // Proctor's SSH host key, once an SSH resource has been served.
    let ssh = proctor_ssh::host_key::load_public_key(&keys_dir)?;
    let ssh_file = keys_dir.join(proctor_ssh::host_key::HOST_PUBLIC_KEY_FILE);
    // And the CA that signs grants' SSH user certificates.
    let ca_role = proctor_ssh::host_key::KeyRole::UserCa;
    let ca = proctor_ssh::host_key::load_public_key_as(&keys_dir, ca_role)?;
    let ca_file = keys_dir.join(proctor_ssh::host_key::USER_CA_PUBLIC_FILE);
    if as_json {
        let ssh_host_key = ssh.as_ref().map(|key| {
            json!({
                "fingerprint": key.fingerprint(russh::keys::HashAlg::Sha256).to_string(),
                "public_key": proctor_ssh::host_key::public_line(key),
                "file": ssh_file,
            })
        });
        println!(
            "{}",
            json!({
                "algorithm": "ed25519",
                "fingerprint": fingerprint(&key),
                "public_key_hex": hex_encode(key.as_bytes()),
                "public_key_pem": pem,
                "file": keys_dir.join(proctor_recorder::keys::PUBLIC_KEY_FILE),
                "ssh_host_key": ssh_host_key,
                "ssh_user_ca": ca.as_ref().map(|key| json!({
                    "fingerprint": key.fingerprint(russh::keys::HashAlg::Sha256).to_string(),
                    "public_key": proctor_ssh::host_key::public_line(key),
                    "file": ca_file,
                })),
            })
        );
    } else {
        println!("algorithm:   ed25519");
        println!("fingerprint: {}", fingerprint(&key));
        println!("public key:  {}", hex_encode(key.as_bytes()));
        println!("file:        {}", keys_dir.join(proctor_recorder::keys::PUBLIC_KEY_FILE).display());
        print!("{pem}");
        if let Some(key) = &ssh {
            println!();
            println!("SSH host key (what SSH clients pin):");
            println!("fingerprint: {}", key.fingerprint(russh::keys::HashAlg::Sha256));
            println!("public key:  {}", proctor_ssh::host_key::public_line(key));
            println!("file:        {}", ssh_file.display());
        }
        if let Some(key) = &ca {
            println!();
            println!("SSH user CA (signs grants' SSH certificates):");
            println!("fingerprint: {}", key.fingerprint(russh::keys::HashAlg::Sha256));
            println!("public key:  {}", proctor_ssh::host_key::public_line(key));
            println!("file:        {}", ca_file.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
