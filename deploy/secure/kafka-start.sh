#!/bin/sh
# The Kafka broker of docker-compose.secure.yml: one KRaft node that takes clients only over
# SASL_SSL with SCRAM-SHA-512 and authorizes every request (StandardAuthorizer: no ACL, no
# access), its super user `admin`. Renders server.properties from the environment, formats the
# storage on first start with the admin's SCRAM credential in the first metadata records
# (`--add-scram`: KRaft keeps SCRAM credentials in its metadata log, so the first one has to
# be there before anybody can log in), then runs the broker in the foreground.
#
# Environment: KAFKA_ADMIN_PASSWORD (required), KAFKA_HOME (/opt/kafka), KAFKA_DATA
# (/var/lib/kafka/data), KAFKA_CERTS (/etc/kafka/steplog-certs: make-certs.sh's ca.pem and
# broker.pem), KAFKA_ADVERTISED_HOST (kafka), KAFKA_LISTEN_HOST (all interfaces), KAFKA_PORT
# (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_CLUSTER_ID (a fixed id: one cluster per volume),
# KAFKA_CONFIG_DIR (/tmp/steplog-kafka: server.properties and admin.properties, the admin's
# client configuration for Kafka's own tools and the healthcheck; both 0600, they hold the
# password).
set -eu
: "${KAFKA_ADMIN_PASSWORD:?set KAFKA_ADMIN_PASSWORD (the broker admin's SCRAM password)}"
home=${KAFKA_HOME:-/opt/kafka}
data=${KAFKA_DATA:-/var/lib/kafka/data}
certs=${KAFKA_CERTS:-/etc/kafka/steplog-certs}
advertised=${KAFKA_ADVERTISED_HOST:-kafka}
listen=${KAFKA_LISTEN_HOST:-}
port=${KAFKA_PORT:-9092}
controller_port=${KAFKA_CONTROLLER_PORT:-9093}
cluster_id=${KAFKA_CLUSTER_ID:-c3RlcGxvZy1zZWN1cmUx}
for file in ca.pem broker.pem; do
    [ -s "$certs/$file" ] || { echo "kafka-start: $certs/$file is missing: run deploy/secure/make-certs.sh" >&2; exit 2; }
done
case $KAFKA_ADMIN_PASSWORD in
    *\"*|*\\*|*\;*|*\ *) echo "kafka-start: KAFKA_ADMIN_PASSWORD may not hold quotes, backslashes, ';' or spaces (it goes into a JAAS line)" >&2; exit 2 ;;
esac
config_dir=${KAFKA_CONFIG_DIR:-/tmp/steplog-kafka}
config=$config_dir/server.properties
umask 077
mkdir -p "$config_dir"
scram=org.apache.kafka.common.security.scram.ScramLoginModule
plain=org.apache.kafka.common.security.plain.PlainLoginModule
cat > "$config" <<PROPERTIES
node.id=1
process.roles=broker,controller
log.dirs=$data
listeners=SASL_SSL://$listen:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=SASL_SSL://$advertised:$port
inter.broker.listener.name=SASL_SSL
controller.listener.names=CONTROLLER
controller.quorum.voters=1@127.0.0.1:$controller_port
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$scram required username="admin" password="$KAFKA_ADMIN_PASSWORD";
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=$plain required username="admin" password="$KAFKA_ADMIN_PASSWORD" user_admin="$KAFKA_ADMIN_PASSWORD";
ssl.keystore.type=PEM
ssl.keystore.location=$certs/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=$certs/ca.pem
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin
allow.everyone.if.no.acl.found=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
PROPERTIES
cat > "$config_dir/admin.properties" <<PROPERTIES
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=$scram required username="admin" password="$KAFKA_ADMIN_PASSWORD";
ssl.truststore.type=PEM
ssl.truststore.location=$certs/ca.pem
PROPERTIES
"$home/bin/kafka-storage.sh" format --ignore-formatted --cluster-id "$cluster_id" --config "$config" \
    --add-scram "SCRAM-SHA-512=[name=admin,password=$KAFKA_ADMIN_PASSWORD]"
exec "$home/bin/kafka-server-start.sh" "$config"
