//! The one declaration of every setting of `artifactstore serve`: the `settings!` macro turns
//! each line — key, type on the command line and in the file, variable, default, help — into
//! a clap argument (`ServeArgs`, flag `--key-with-dashes`), a TOML key (`FileConfig`) and a
//! row of `SETTINGS`, which a test holds the README's configuration table against.

/// One declared setting, as the README's table states it.
#[derive(Clone, Copy, Debug)]
pub struct Declared {
    /// The TOML key; the flag is `--` and the key with `-` for `_`.
    pub key: &'static str,
    pub env: &'static str,
    /// The default as the README states it.
    pub default: &'static str,
    pub help: &'static str,
}

impl Declared {
    pub fn flag(&self) -> String {
        format!("--{}", self.key.replace('_', "-"))
    }
}

/// Declares the settings (see the module comment). Each line:
/// `key: FlagType, FileType, "ENV_VAR", "default as the README states it", "help"[, [clap args]];`
macro_rules! settings {
    ($(
        $key:ident: $flag:ty, $file:ty, $env:literal, $default:literal, $help:literal
        $(, [$($arg:tt)*])?;
    )*) => {
        /// `artifactstore serve`'s settings as flags and environment variables (clap).
        #[derive(Clone, Default, clap::Args)]
        pub struct ServeArgs {
            /// TOML configuration file.
            #[arg(long, env = "ARTIFACTSTORE_CONFIG")]
            pub config: Option<PathBuf>,
            $(
                #[arg(long, env = $env, help = concat!($help, " [default: ", $default, "]")
                    $(, $($arg)*)?)]
                pub $key: Option<$flag>,
            )*
        }

        /// The TOML file: the same keys. Tokens may be given as `token` or as the hex
        /// SHA-256 of the token.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct FileConfig {
            $(pub $key: Option<$file>,)*
        }

        /// Every setting, as declared.
        pub const SETTINGS: &[Declared] = &[
            $(Declared { key: stringify!($key), env: $env, default: $default, help: $help },)*
        ];
    };
}

#[cfg(test)]
mod tests {
    use super::super::SETTINGS;

    /// The README's configuration table: per row, the flags and variables of its first cell
    /// and its default (without backticks).
    fn readme_rows() -> Vec<(Vec<String>, Vec<String>, String)> {
        let readme = include_str!("../../../../README.md");
        readme
            .lines()
            .filter(|line| line.starts_with("| `--"))
            .map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let quoted: Vec<String> = cells[1]
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_string)
                    .collect();
                let flags = quoted.iter().filter(|q| q.starts_with("--")).cloned();
                let envs = quoted.iter().filter(|q| q.starts_with("ARTIFACTSTORE_"));
                let default = cells[2].replace('`', "");
                (flags.collect(), envs.cloned().collect(), default)
            })
            .collect()
    }

    #[test]
    fn the_readme_table_states_every_setting_as_declared() {
        let rows = readme_rows();
        for setting in SETTINGS {
            let flag = setting.flag();
            let row = rows.iter().find(|(flags, _, _)| flags.contains(&flag));
            let Some((_, envs, default)) = row else {
                panic!("README.md has no row for {flag}");
            };
            assert!(
                envs.iter().any(|e| e == setting.env),
                "{flag}: README names {envs:?}, declared {}",
                setting.env
            );
            assert_eq!(default, setting.default, "{flag}: default");
        }
        for (flags, envs, _) in &rows {
            for flag in flags {
                assert!(
                    SETTINGS.iter().any(|s| &s.flag() == flag),
                    "README.md states {flag}, which is not declared"
                );
            }
            for env in envs {
                assert!(
                    SETTINGS.iter().any(|s| s.env == env),
                    "README.md states {env}, which is not declared"
                );
            }
        }
    }

    #[test]
    fn every_flag_and_key_is_declared_once() {
        let mut keys: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), SETTINGS.len());
        for s in SETTINGS {
            assert_eq!(s.env, format!("ARTIFACTSTORE_{}", s.key.to_uppercase()));
        }
    }
}
