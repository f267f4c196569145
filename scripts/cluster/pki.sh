#!/usr/bin/env bash
# Certificates of a test cluster, made with openssl: one CA, the API server's serving
# certificate, and client certificates for whoever authenticates by x509 (the kubelet as
# system:node:<name> in system:nodes, the API server towards the kubelet, kube-proxy).
# Sourced by up.sh; every function writes into "$PKI".

# $1: name, $2: subject ("/CN=.../O=..."), $3: subjectAltName ("" for a client-only cert),
# $4: extendedKeyUsage.
pki_cert() {
    local name=$1 subject=$2 san=$3 usage=$4 ext
    ext="$PKI/$name.ext"
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$usage"
        [[ -n "$san" ]] && echo "subjectAltName=$san"
    } >"$ext"
    openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -subj "$subject" \
        -out "$PKI/$name.csr" 2>/dev/null
    openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
        -CAcreateserial -days 30 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
    rm -f "$PKI/$name.csr" "$ext"
}

pki_ca() {
    openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -days 30 \
        -subj "/CN=shufflenet-test-ca" -out "$PKI/ca.crt" 2>/dev/null
}

# $1: the API server's addresses (comma-separated IPs), $2: the `kubernetes` Service IP.
pki_apiserver() {
    local ips=$1 service_ip=$2 san ip
    san="DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
    san+=",DNS:kubernetes.default.svc.cluster.local,IP:$service_ip"
    for ip in ${ips//,/ }; do san+=",IP:$ip"; done
    pki_cert apiserver "/CN=kube-apiserver" "$san" serverAuth
}

# A kubeconfig for an x509 client. $1: file, $2: server URL, $3: cert name in $PKI.
pki_kubeconfig() {
    local file=$1 server=$2 name=$3
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: shufflenet
  cluster: {server: "$server", certificate-authority: "$PKI/ca.crt"}
users:
- name: $name
  user: {client-certificate: "$PKI/$name.crt", client-key: "$PKI/$name.key"}
contexts:
- name: shufflenet
  context: {cluster: shufflenet, user: $name}
current-context: shufflenet
EOF
    chmod 600 "$file"
}
