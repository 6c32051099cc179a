//! ECS's naming rules, one function per kind of name.
//!
//! Each check returns `Err(problem)` with a sentence fragment that reads well
//! after the name (e.g. `"Web" contains "W"; ...`), and [`suggest`] builds a
//! valid name close to an invalid one for the "fix:" line.

/// Longest `portMappings[].name` / `discoveryName`.
pub const MAX_PORT_NAME: usize = 64;
/// Longest `clientAliases[].dnsName`.
pub const MAX_DNS_NAME: usize = 127;
/// Longest `serviceName`, task definition `family` and `clusterName`.
pub const MAX_RESOURCE_NAME: usize = 255;
/// Longest namespace name.
pub const MAX_NAMESPACE: usize = 1024;

fn check(
    value: &str,
    max: usize,
    allowed: fn(char) -> bool,
    allowed_text: &str,
    no_leading_dash: bool,
) -> Result<(), String> {
    if value.is_empty() {
        return Err("is empty".to_owned());
    }
    let len = value.chars().count();
    if len > max {
        return Err(format!(
            "is {len} characters long; at most {max} are allowed"
        ));
    }
    if let Some(bad) = value.chars().find(|&c| !allowed(c)) {
        return Err(format!("contains {bad:?}; only {allowed_text} are allowed"));
    }
    if no_leading_dash && value.starts_with('-') {
        return Err("starts with \"-\", which is not allowed".to_owned());
    }
    Ok(())
}

fn lower_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
}

/// `portMappings[].name` and `discoveryName`: at most 64 of `[a-z0-9_-]`,
/// not starting with `-`.
pub fn check_port_name(value: &str) -> Result<(), String> {
    check(
        value,
        MAX_PORT_NAME,
        lower_name_char,
        "lowercase letters, digits, \"_\" and \"-\"",
        true,
    )
}

/// `clientAliases[].dnsName`: at most 127 of `[a-z0-9_.-]`, not starting
/// with `-`. It need not be a fully qualified name.
pub fn check_dns_name(value: &str) -> Result<(), String> {
    check(
        value,
        MAX_DNS_NAME,
        |c| lower_name_char(c) || c == '.',
        "lowercase letters, digits, \"_\", \".\" and \"-\"",
        true,
    )
}

/// `serviceName`, task definition `family` and `clusterName`: 1..=255 of
/// `[A-Za-z0-9_-]`.
pub fn check_resource_name(value: &str) -> Result<(), String> {
    check(
        value,
        MAX_RESOURCE_NAME,
        |c| c.is_ascii_alphanumeric() || c == '_' || c == '-',
        "letters, digits, \"_\" and \"-\"",
        false,
    )
}

/// A namespace name (cluster `serviceConnectDefaults.namespace`, service
/// `serviceConnectConfiguration.namespace`, Cloud Map `Name`, knit.toml
/// `default_namespace`): 1..=1024 printable ASCII characters without spaces
/// or any of `< > " /`. knit refers to namespaces by name only, so an ARN is
/// refused with a hint.
pub fn check_namespace(value: &str) -> Result<(), String> {
    if value.starts_with("arn:") {
        return Err(
            "is an ARN; knit refers to namespaces by name (it has no Cloud Map to look IDs up in)"
                .to_owned(),
        );
    }
    check(
        value,
        MAX_NAMESPACE,
        |c| c.is_ascii_graphic() && !matches!(c, '<' | '>' | '"' | '/'),
        "printable ASCII characters other than space, '<', '>', '\"' and '/'",
        false,
    )
}

/// True when `value` can serve as a host name in /etc/hosts as knit writes
/// it (a derived `discoveryName.namespace` default): at most 127 of
/// `[A-Za-z0-9_.-]`, not starting with `-`. Case does not matter to resolvers.
pub(crate) fn check_derived_dns_name(value: &str) -> Result<(), String> {
    check(
        value,
        MAX_DNS_NAME,
        |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'),
        "letters, digits, \"_\", \".\" and \"-\"",
        true,
    )
}

/// A valid `[a-z0-9_-]` name (at most `max` characters) close to `value`,
/// for suggestions: lowercased, other characters as `-`, no leading `-`.
pub fn suggest(value: &str, max: usize) -> String {
    let mapped: String = value
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if lower_name_char(c) { c } else { '-' }
        })
        .collect();
    let trimmed: String = mapped.trim_start_matches('-').chars().take(max).collect();
    if trimmed.is_empty() {
        "name".to_owned()
    } else {
        trimmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<(), String>) -> String {
        match r {
            Err(e) => e,
            Ok(()) => panic!("expected a problem"),
        }
    }

    #[test]
    fn port_names() {
        assert!(check_port_name("web_1-a").is_ok());
        assert!(check_port_name(&"a".repeat(64)).is_ok());
        let long = err(check_port_name(&"a".repeat(65)));
        assert!(long.contains("65") && long.contains("64"), "{long}");
        assert!(err(check_port_name("Web")).contains("'W'"));
        assert!(err(check_port_name("-web")).contains("starts with"));
        assert!(err(check_port_name("")).contains("empty"));
        assert!(check_port_name("a.b").is_err());
    }

    #[test]
    fn dns_names() {
        assert!(check_dns_name("nginx.service-connect").is_ok());
        assert!(check_dns_name("-x").is_err());
        assert!(check_dns_name("Nginx").is_err());
        assert!(check_dns_name(&"a".repeat(128)).is_err());
        assert!(check_derived_dns_name("nginx.MyNs").is_ok());
        assert!(check_derived_dns_name("nginx.my!ns").is_err());
    }

    #[test]
    fn resource_names() {
        assert!(check_resource_name("My_Service-2").is_ok());
        assert!(check_resource_name(&"a".repeat(256)).is_err());
        assert!(err(check_resource_name("my service")).contains("' '"));
    }

    #[test]
    fn namespaces() {
        assert!(check_namespace("service-connect").is_ok());
        assert!(check_namespace("Prod.Internal").is_ok());
        assert!(check_namespace("a/b").is_err());
        assert!(check_namespace("a b").is_err());
        assert!(check_namespace("").is_err());
        let arn = err(check_namespace(
            "arn:aws:servicediscovery:r:1:namespace/ns-x",
        ));
        assert!(arn.contains("ARN"), "{arn}");
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("Web Port", 64), "web-port");
        assert_eq!(suggest("--x", 64), "x");
        assert_eq!(suggest("!!", 64), "name");
        assert_eq!(suggest(&"a".repeat(70), 64).len(), 64);
    }
}
