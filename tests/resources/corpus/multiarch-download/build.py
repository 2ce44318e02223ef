"""A tool downloaded for the target architecture, picked by TARGETARCH."""

import imagedsl as dsl

kubectl = (
    dsl.image("alpine:3.19")
    .arg("TARGETARCH")
    .arg("KUBECTL_VERSION", "1.30.2")
    .run(
        'case "${TARGETARCH}" in'
        "       amd64) ARCH=amd64 ;;"
        "       arm64) ARCH=arm64 ;;"
        '       *) echo "unsupported: ${TARGETARCH}" && exit 1 ;;'
        "     esac"
        '  && curl -fsSL -o /usr/local/bin/kubectl "https://dl.k8s.io/release/v${KUBECTL_VERSION}'
        '/bin/linux/${ARCH}/kubectl"'
        "  && chmod +x /usr/local/bin/kubectl"
    )
    .entrypoint(["kubectl"])
    .cmd("version", "--client")
)
