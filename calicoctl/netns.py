"""calicoctl's name for the namespace helpers, which moved to libcalico for the plugins to share."""

from libcalico.netns import (  # noqa: F401 - re-exported for calicoctl's modules and their tests
    NETNS_DIRS,
    NamespaceRef,
    NetnsError,
    addresses,
    eui64_link_local,
    ip_batch,
    link,
    links,
    resolve,
    routes,
    run,
)
