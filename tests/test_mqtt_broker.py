"""The MQTT test broker (tests/mqtt_broker.py) does what the MQTT tests rely on: a real mosquitto
that keeps retained messages, checks passwords and the ACL, verifies under TLS, and survives a
restart on the same port."""

import socket
import ssl
import stat

import pytest
from mqtt_broker import Broker, BrokerError, ConnectRefused, Subscriber, _probe


def test_a_subscriber_gets_a_retained_message_then_live_ones(mqtt_broker):
    with Subscriber(mqtt_broker, ()) as publisher:
        publisher.publish("appliance/trap/state", b'{"online": true}', retain=True)
        with Subscriber(mqtt_broker, ["appliance/#"]) as subscriber:
            retained = subscriber.wait_for(lambda m: m.topic == "appliance/trap/state")
            publisher.publish("appliance/trap/event", "motion", qos=0)
            publisher.publish("elsewhere", "not subscribed")
            publisher.publish("appliance/trap/state", b'{"online": false}', qos=2)
            live = subscriber.wait_for(lambda m: m.topic == "appliance/trap/state" and not m.retain)

    assert (retained.retain, retained.qos, retained.json()) == (True, 1, {"online": True})
    assert (live.qos, live.json()) == (0 + 2, {"online": False})
    assert subscriber.topics() == {"appliance/trap/state", "appliance/trap/event"}
    assert subscriber.last("appliance/trap/event").payload == b"motion"
    assert subscriber.last("appliance/trap/event").qos == 0
    assert subscriber.last("elsewhere") is None
    assert "Received PUBLISH" in mqtt_broker.log()


def test_wait_for_says_which_topics_came_when_none_matches(mqtt_broker):
    with Subscriber(mqtt_broker) as subscriber:
        subscriber.publish("appliance/trap/a", "1")
        subscriber.wait_for(lambda m: m.topic == "appliance/trap/a")
        with pytest.raises(AssertionError, match=r"appliance/trap/a"):
            subscriber.wait_for(lambda m: m.topic == "appliance/trap/b", timeout_s=0.2)


def test_the_auth_broker_refuses_a_wrong_password_and_takes_the_written_one(mqtt_broker_auth, tmp_path):
    path = mqtt_broker_auth.password_file("trap", tmp_path / "trap.password")

    written = path.read_text()
    assert written.count("\n") == 1 and written.endswith("\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with Subscriber(mqtt_broker_auth, ["appliance/trap/#"], user="trap", password=written[:-1]):
        pass
    with pytest.raises(ConnectRefused, match="Not authorized"):
        Subscriber(mqtt_broker_auth, user="trap", password=written[:-1] + "x")
    with pytest.raises(ConnectRefused, match="Not authorized"):
        Subscriber(mqtt_broker_auth, user="nobody", password="anything")
    with pytest.raises(ConnectRefused, match="Not authorized"):
        _probe(mqtt_broker_auth, user=None)  # anonymous
    with pytest.raises(KeyError, match="nobody"):
        mqtt_broker_auth.password_file("nobody", tmp_path / "nobody.password")


def test_the_acl_keeps_each_user_to_its_topics(mqtt_broker_auth):
    with (
        Subscriber(mqtt_broker_auth) as watcher,
        Subscriber(mqtt_broker_auth, ["#"], user="other") as other,
        Subscriber(mqtt_broker_auth, (), user="trap") as trap,
    ):
        trap.publish("appliance/other/forged", "denied")
        other.publish("appliance/trap/forged", "denied")
        watcher.publish("appliance/trap/forged", "denied")
        other.publish("appliance/other/state", "allowed")
        trap.publish("homeassistant/sensor/trap/config", "allowed")
        trap.publish("appliance/trap/state", "allowed")
        # One client's messages arrive in order: once its last one is here, a denied one would be too.
        watcher.wait_for(lambda m: m.topic == "appliance/trap/state")
        watcher.wait_for(lambda m: m.topic == "appliance/other/state")

    allowed = {"appliance/other/state", "homeassistant/sensor/trap/config", "appliance/trap/state"}
    assert watcher.topics() == allowed
    assert other.messages == []  # "other" may not read, not even its own
    assert mqtt_broker_auth.log().count("Denied PUBLISH") == 3


def test_the_tls_broker_is_verified_against_its_ca_and_refused_without_it(mqtt_broker_tls):
    with Subscriber(mqtt_broker_tls) as subscriber:
        subscriber.publish("appliance/trap/state", "over TLS")
        assert subscriber.wait_for(lambda m: m.topic == "appliance/trap/state").payload == b"over TLS"

    address = (mqtt_broker_tls.host, mqtt_broker_tls.port)
    with_ca = ssl.create_default_context(cafile=mqtt_broker_tls.ca_path)
    with socket.create_connection(address, timeout=5) as raw:
        with_ca.wrap_socket(raw, server_hostname="127.0.0.1").close()  # verified: chain and IP address
    without_ca = ssl.create_default_context()
    with (
        socket.create_connection(address, timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError, match="self-signed certificate in certificate chain"),
    ):
        without_ca.wrap_socket(raw, server_hostname="127.0.0.1")
    with (
        socket.create_connection(address, timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"),
    ):
        with_ca.wrap_socket(raw, server_hostname="127.0.0.2")


def test_a_restart_on_the_same_port_keeps_retained_messages_and_a_kill_loses_new_ones(mqtt_broker):
    port = mqtt_broker.port
    with Subscriber(mqtt_broker, ()) as publisher:
        publisher.publish("appliance/trap/state", "before the restart", retain=True)
    mqtt_broker.stop()
    mqtt_broker.stop()  # idempotent
    mqtt_broker.start()
    with Subscriber(mqtt_broker) as subscriber:
        kept = subscriber.wait_for(lambda m: m.topic == "appliance/trap/state")
        subscriber.publish("appliance/trap/state", "before the kill", retain=True)
    mqtt_broker.kill()  # SIGKILL: mosquitto saves nothing
    mqtt_broker.start()
    with Subscriber(mqtt_broker) as subscriber:
        after_kill = subscriber.wait_for(lambda m: m.topic == "appliance/trap/state")

    assert mqtt_broker.port == port
    assert (kept.retain, kept.payload) == (True, b"before the restart")
    assert after_kill.payload == b"before the restart"


def test_a_subscriber_subscribes_again_after_a_restart(mqtt_broker):
    with Subscriber(mqtt_broker, ["appliance/#"]) as subscriber:
        mqtt_broker.stop()
        mqtt_broker.start()
        with Subscriber(mqtt_broker, ()) as publisher:
            publisher.publish("appliance/trap/state", "after the restart", retain=True)
        again = subscriber.wait_for(lambda m: m.topic == "appliance/trap/state")

    assert again.payload == b"after the restart"


def test_a_broker_that_cannot_start_says_why(mqtt_broker, tmp_path):
    taken = Broker(tmp_path / "second", port=mqtt_broker.port)

    with pytest.raises(BrokerError, match="Address already in use"):
        taken.start()
    assert not taken.running
