use super::*;

fn parse(method: &str, target: &str) -> Result<Attributes, PathError> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    Attributes::parse(method, path, query)
}

fn ok(method: &str, target: &str) -> Attributes {
    parse(method, target).unwrap_or_else(|e| panic!("{method} {target}: {e}"))
}

#[test]
fn verbs_follow_method_and_path() {
    let cases = [
        ("GET", "/api/v1/namespaces/shop/pods/web-0", "get"),
        ("HEAD", "/api/v1/namespaces/shop/pods/web-0", "get"),
        ("GET", "/api/v1/namespaces/shop/pods", "list"),
        ("GET", "/api/v1/namespaces/shop/pods?watch=1", "watch"),
        (
            "GET",
            "/api/v1/namespaces/shop/pods?watch=true&resourceVersion=7",
            "watch",
        ),
        ("GET", "/api/v1/namespaces/shop/pods?watch=false", "list"),
        ("GET", "/api/v1/watch/namespaces/shop/pods", "watch"),
        ("GET", "/api/v1/watch/namespaces/shop/pods/web-0", "watch"),
        ("GET", "/api/v1/pods", "list"),
        ("POST", "/api/v1/namespaces/shop/pods", "create"),
        ("PUT", "/api/v1/namespaces/shop/pods/web-0", "update"),
        ("PATCH", "/apis/apps/v1/namespaces/shop/deployments/web", "patch"),
        ("DELETE", "/api/v1/namespaces/shop/pods/web-0", "delete"),
        ("DELETE", "/api/v1/namespaces/shop/pods", "deletecollection"),
        ("GET", "/api/v1/namespaces", "list"),
        ("DELETE", "/api/v1/namespaces/shop", "delete"),
    ];
    for (method, target, verb) in cases {
        assert_eq!(ok(method, target).action, verb, "{method} {target}");
    }
}

#[test]
fn attributes_are_split_like_the_api_server() {
    let a = ok("GET", "/apis/apps/v1/namespaces/shop/deployments/web/scale");
    assert_eq!(a.kind, PathKind::Resource);
    assert_eq!(
        (a.api_group.as_str(), a.api_version.as_str(), a.resource.as_str()),
        ("apps", "v1", "deployments")
    );
    assert_eq!(a.namespace.as_deref(), Some("shop"));
    assert_eq!(a.name.as_deref(), Some("web"));
    assert_eq!(a.subresource.as_deref(), Some("scale"));

    let ns = ok("GET", "/api/v1/namespaces/shop");
    assert_eq!((ns.resource.as_str(), ns.name.as_deref()), ("namespaces", Some("shop")));
    assert_eq!(ns.namespace.as_deref(), Some("shop"));
    let finalize = ok("PUT", "/api/v1/namespaces/shop/finalize");
    assert_eq!(finalize.resource, "namespaces");
    assert_eq!(finalize.subresource.as_deref(), Some("finalize"));

    let all = ok("GET", "/api/v1/secrets");
    assert_eq!((all.resource.as_str(), all.namespace.as_deref()), ("secrets", None));
    assert!(all.may_carry_secrets());
    assert!(!ok("GET", "/api/v1/namespaces/x/configmaps").may_carry_secrets());

    let context = a.context();
    assert_eq!(context["api_group"], "apps");
    assert_eq!(context["subresource"], "scale");
    assert_eq!(context["non_resource"], false);
    assert_eq!(context["path"], "/apis/apps/v1/namespaces/shop/deployments/web/scale");
    assert!(all.context().get("name").is_none());
}

#[test]
fn field_selector_names_a_list() {
    let a = ok(
        "GET",
        "/api/v1/namespaces/x/secrets?fieldSelector=metadata.name%3Ddb&watch=1",
    );
    assert_eq!((a.action, a.name.as_deref()), ("watch", Some("db")));
    let b = ok(
        "GET",
        "/api/v1/namespaces/x/secrets?fieldSelector=metadata.name%3Ddb%2Cstatus.phase%3DX",
    );
    assert_eq!((b.action, b.name), ("list", None));
    assert_eq!(
        parse("GET", "/api/v1/x?fieldSelector=a&fieldSelector=b"),
        Err(PathError::DuplicateParameter("fieldSelector"))
    );
}

#[test]
fn exec_class_subresources_are_their_own_actions_whatever_the_method() {
    for (method, target, action) in [
        ("GET", "/api/v1/namespaces/x/pods/web/exec?command=sh", "exec"),
        ("POST", "/api/v1/namespaces/x/pods/web/exec", "exec"),
        ("POST", "/api/v1/namespaces/x/pods/web/attach", "attach"),
        ("GET", "/api/v1/namespaces/x/pods/web/portforward", "portforward"),
        (
            "PATCH",
            "/api/v1/namespaces/x/pods/web/ephemeralcontainers",
            "ephemeralcontainers",
        ),
        ("GET", "/api/v1/namespaces/x/pods/web/proxy/metrics", "proxy"),
        ("DELETE", "/api/v1/namespaces/x/services/web:80/proxy/x", "proxy"),
        ("GET", "/api/v1/nodes/n1/proxy/logs", "proxy"),
    ] {
        let a = ok(method, target);
        assert_eq!(a.action, action, "{method} {target}");
        assert!(a.is_exec_class());
    }
    // Other groups' subresources of the same name are ordinary verbs.
    assert_eq!(
        ok("GET", "/apis/example.com/v1/namespaces/x/pods/web/exec").action,
        "get"
    );
    assert_eq!(ok("GET", "/api/v1/namespaces/x/pods/web/log?follow=true").action, "get");
}

#[test]
fn port_forward_ports_come_from_the_query() {
    let a = ok(
        "GET",
        "/api/v1/namespaces/x/pods/web/portforward?ports=8080,5432&ports=8080",
    );
    assert_eq!(a.ports, [8080, 5432]);
    assert_eq!(a.context()["ports"], serde_json::json!([8080, 5432]));
    // kubectl's SPDY tunnel names its ports inside the stream: unknown here.
    let a = ok("POST", "/api/v1/namespaces/x/pods/web/portforward");
    assert!(a.ports.is_empty() && a.context().get("ports").is_none());
    for bad in ["0", "65536", "http", "80,", "-1"] {
        let refused = parse("GET", &format!("/api/v1/namespaces/x/pods/web/portforward?ports={bad}"));
        assert!(matches!(refused, Err(PathError::BadPort(_))), "{bad}: {refused:?}");
    }
    // Only port-forward reads them.
    assert!(ok("GET", "/api/v1/namespaces/x/pods?ports=x").ports.is_empty());
}

#[test]
fn discovery_and_non_resource_paths() {
    for target in [
        "/api",
        "/api/v1",
        "/apis",
        "/apis/apps",
        "/apis/apps/v1",
        "/version",
        "/openapi/v2",
        "/openapi/v3/api/v1",
    ] {
        let a = ok("GET", target);
        assert_eq!((a.kind, a.action), (PathKind::Discovery, "connect"), "{target}");
    }
    let metrics = ok("GET", "/metrics");
    assert_eq!((metrics.kind, metrics.action), (PathKind::NonResource, "get"));
    assert_eq!(metrics.context()["non_resource"], true);
    assert_eq!(ok("POST", "/openapi/v2").kind, PathKind::NonResource);
    assert_eq!(ok("GET", "/").path, "/");
}

#[test]
fn ambiguous_paths_are_refused() {
    for (target, error) in [
        ("/api/v1/namespaces/x/pods/../secrets", PathError::DotSegment),
        ("/api/v1/namespaces/x/./pods", PathError::DotSegment),
        ("/api/v1//namespaces/x/pods", PathError::EmptySegment),
        ("/api/v1/namespaces/x/pods/", PathError::EmptySegment),
        (
            "/api/v1/namespaces/x/pods/%2E%2E/secrets",
            PathError::AmbiguousEncoding("%2E, a dot"),
        ),
        (
            "/api/v1/namespaces/x%2Fsecrets",
            PathError::AmbiguousEncoding("%2F, a slash"),
        ),
        (
            "/api/v1/namespaces/x%2fsecrets",
            PathError::AmbiguousEncoding("%2F, a slash"),
        ),
        (
            "/api/v1/namespaces/x%252Fsecrets",
            PathError::AmbiguousEncoding("%25, a percent sign"),
        ),
        (
            "/api/v1/namespaces/x%5Csecrets",
            PathError::AmbiguousEncoding("%5C, a backslash"),
        ),
        ("/api/v1/namespaces/x%zz", PathError::BadPercent),
        ("/api/v1/namespaces/x%2", PathError::BadPercent),
        ("/api/v1/namespaces/x%00", PathError::AmbiguousEncoding("%00, a NUL")),
        ("/api/v1/namespaces/x\\..\\secrets", PathError::BadCharacter),
        ("/api/v1/namespaces/x;y", PathError::BadCharacter),
        ("/api/v1/namespaces/x%0A", PathError::BadCharacter),
        ("/api/v1/namespaces/%FF", PathError::BadCharacter),
        ("api/v1", PathError::NotAbsolute),
        ("/api/v1/pods?watch=1&watch=0", PathError::DuplicateParameter("watch")),
        ("/api/v1/pods?watch=yes", PathError::NotBoolean("watch")),
        ("/api/v1/pods?w%61tch=yes", PathError::NotBoolean("watch")),
        ("/api/v1/pods?watch=%zz", PathError::BadPercent),
        ("/api/v1/namespaces/x/pods/web?watch=1", PathError::NamedWatch),
    ] {
        assert_eq!(parse("GET", target), Err(error), "{target}");
    }
    assert_eq!(
        parse("OPTIONS", "/api/v1/pods"),
        Err(PathError::Method("OPTIONS".into()))
    );
}

#[test]
fn harmless_encodings_are_decoded_and_forwarded_canonically() {
    let a = ok("GET", "/api/v1/namespaces/%73hop/pods/web%3A1?limit=500");
    assert_eq!(a.namespace.as_deref(), Some("shop"));
    assert_eq!(a.name.as_deref(), Some("web:1"));
    assert_eq!(a.path, "/api/v1/namespaces/shop/pods/web:1");
    assert_eq!(a.path_and_query(), "/api/v1/namespaces/shop/pods/web:1?limit=500");
    let spaced = ok("GET", "/api/v1/namespaces/a%20b/pods");
    assert_eq!(spaced.path, "/api/v1/namespaces/a%20b/pods");
}
