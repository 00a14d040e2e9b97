#!/bin/sh
# Run a build step with the optional BuildKit secrets, without writing them into any image layer:
#   RUN --mount=type=secret,id=ca_bundle --mount=type=tmpfs,target=/run/ckit \
#       with-build-secrets pip install ...
# ca_bundle: extra CA certificates (a hospital's TLS-inspecting proxy). Appended to the system trust store in a
#   tmpfs file, and every client used in builds (pip, requests, curl, git, apt) is pointed at it. A bundle holding
#   only the proxy CA works, and so does a full bundle.
# It lives under /run/secrets (a secret mount) and /run/ckit (tmpfs): neither survives the step. (No step takes a
# hub token: the images download nothing from a model hub; models are mounted or converted at run time.)
set -eu

ca_secret=/run/secrets/ca_bundle
work=/run/ckit

if [ -s "$ca_secret" ]; then
    mkdir -p "$work"
    bundle="$work/ca-bundle.pem"
    : > "$bundle"
    for system in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
        if [ -s "$system" ]; then cat "$system" >> "$bundle"; break; fi
    done
    cat "$ca_secret" >> "$bundle"
    export PIP_CERT="$bundle" REQUESTS_CA_BUNDLE="$bundle" SSL_CERT_FILE="$bundle" CURL_CA_BUNDLE="$bundle" \
        GIT_SSL_CAINFO="$bundle"
    printf 'Acquire::https::CAInfo "%s";\n' "$bundle" > "$work/apt-ca.conf"
    export APT_CONFIG="$work/apt-ca.conf"
fi
exec "$@"
