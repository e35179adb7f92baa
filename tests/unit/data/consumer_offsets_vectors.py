# ruff: noqa  (a one-off generator kept as documentation of the vectors, not product or test code)
"""Writes consumer_offsets_vectors.json (see its "about"): hand-encoded records per the JSON schemas plus
captured ones (lines "PARTITION OFFSET TIMESTAMP KEYHEX VALUEHEX|None" of a raw read of __consumer_offsets),
all decoded by Kafka's DumpLogSegments --offsets-decoder. Usage: python consumer_offsets_vectors.py BOOTSTRAP
(with the broker's data directory and the capture file at the paths below). Not a test; kept to show how
the vectors were made."""
from confluent_kafka import Producer
from engine.local.kafka import create_topic

def s16(s): b = s.encode(); return struct.pack(">h", len(b)) + b
def ns16(s): return struct.pack(">h", -1) if s is None else s16(s)
def cs(s): b = s.encode(); return uvar(len(b) + 1) + b
def ncs(s): return b"\x00" if s is None else cs(s)
def uvar(n):
    out = b""
    while True:
        if n < 0x80: return out + bytes([n])
        out += bytes([(n & 0x7F) | 0x80]); n >>= 7
def b32(b): return struct.pack(">i", len(b)) + b
def cb(b): return uvar(len(b) + 1) + b
i16 = lambda v: struct.pack(">h", v); i32 = lambda v: struct.pack(">i", v); i64 = lambda v: struct.pack(">q", v)

G = "vec-group"; T = "vec-topic"
commit_key1 = i16(1) + s16(G) + s16(T) + i32(7)
commit_key0 = i16(0) + s16(G) + s16(T) + i32(3)
group_key = i16(2) + s16(G)
TS, EXP = 1796318800123, 1796405200123
sub = bytes.fromhex("000300000001000a7665632d746f7069630000000000000000ffffffff")  # ConsumerProtocol v3 subscription
asg = bytes.fromhex("000300000001000a7665632d746f7069630000000100000007ffffffff")
def member(v, mid, inst, cid, host, reb, sess):
    flex = v >= 4
    S, NS, B = (cs, ncs, cb) if flex else (s16, ns16, b32)
    out = S(mid)
    if v >= 3: out += NS(inst)
    out += S(cid) + S(host)
    if v >= 1: out += i32(reb)
    out += i32(sess) + B(sub) + B(asg)
    if flex: out += b"\x00"
    return out
def gmeta(v, gen, members, protocol="range", leader="m-1", state_ts=TS):
    flex = v >= 4
    S, NS = (cs, ncs) if flex else (s16, ns16)
    out = i16(v) + S("consumer") + i32(gen) + NS(protocol) + NS(leader)
    if v >= 2: out += i64(state_ts)
    out += (uvar(len(members) + 1) if flex else i32(len(members))) + b"".join(members)
    if flex: out += b"\x00"
    return out

hand = [
    ("commit_v0", commit_key1, i16(0) + i64(100) + s16("meta") + i64(TS)),
    ("commit_v1", commit_key1, i16(1) + i64(101) + s16("") + i64(TS) + i64(EXP)),
    ("commit_v2", commit_key1, i16(2) + i64(102) + s16("m2") + i64(TS)),
    ("commit_v3", commit_key1, i16(3) + i64(103) + i32(5) + s16("") + i64(TS)),
    ("commit_v4_topic_id_long_metadata", commit_key1,
     i16(4) + i64(104) + i32(6) + cs("x" * 200) + i64(TS) + uvar(1) + uvar(0) + uvar(16) + bytes(range(16))),
    ("commit_v0_legacy_key", commit_key0, i16(0) + i64(40) + s16("") + i64(TS)),
    ("group_v0", group_key, gmeta(0, 11, [member(0, "m-1", None, "c-1", "/10.0.0.1", -1, 10000)])),
    ("group_v1", group_key, gmeta(1, 12, [member(1, "m-1", None, "c-1", "/10.0.0.1", 300000, 10000)])),
    ("group_v2", group_key, gmeta(2, 13, [member(2, "m-1", None, "c-1", "/10.0.0.1", 300000, 10000),
                                          member(2, "m-2", None, "c-2", "/10.0.0.2", 300000, 10000)])),
    ("group_v3_static_member", group_key, gmeta(3, 14, [member(3, "m-1", "instance-1", "c-1", "/10.0.0.1", 300000, 6000)])),
    ("group_v4", group_key, gmeta(4, 15, [member(4, "m-1", "instance-1", "c-1", "/10.0.0.1", 300000, 6000),
                                          member(4, "m-2", None, "c-2", "/10.0.0.2", 300000, 6000)])),
    ("group_v4_empty_null_protocol", group_key, gmeta(4, 16, [], protocol=None, leader=None)),
]
captured = []
for line in open("/tmp/h20a/cap.txt"):
    part, off, ts, k, v = line.split()
    captured.append((f"broker_p{part}_o{off}", bytes.fromhex(k), None if v == "None" else bytes.fromhex(v)))
bs = sys.argv[1]
topic = "vec-" + uuid.uuid4().hex[:6]
create_topic(bs, topic, partitions=1)
p = Producer({"bootstrap.servers": bs, "linger.ms": 0})
allv = [(n, k, v, "hand-encoded from the JSON schema") for n, k, v in hand] + \
       [(n, k, v, "captured from Apache Kafka 4.1.1") for n, k, v in captured]
for n, k, v, _ in allv:
    p.produce(topic, key=k, value=v); p.flush()
import time; time.sleep(1)
logs = sorted(glob.glob(f"/tmp/h20a/kafka/kafka/data/{topic}-0/*.log"))
res = subprocess.run(["java", "-cp", os.path.expanduser("~/.cache/recon/kafka-4.1.1/libs/*"), "kafka.tools.DumpLogSegments",
                      "--files", logs[0], "--offsets-decoder", "--print-data-log"], capture_output=True, text=True, check=True)
decoded = []
for l in res.stdout.splitlines():
    if l.startswith("| offset:"):
        key = l.split(" key: ", 1)[1].split(" payload: ")[0]
        if key.startswith("Error"):
            raise SystemExit(l)
        payload = l.split(" payload: ", 1)[1] if " payload: " in l else None
        decoded.append((json.loads(key), None if payload in (None, "<DELETE>", "null") else json.loads(payload)))
assert len(decoded) == len(allv), (len(decoded), len(allv), res.stdout[-2000:])
vectors = [{"name": n, "source": src, "key_hex": k.hex(), "value_hex": None if v is None else v.hex(),
            "kafka_key": dk, "kafka_value": dv} for (n, k, v, src), (dk, dv) in zip(allv, decoded)]
json.dump({"about": open("/tmp/h20a/about.txt").read().strip(), "vectors": vectors},
          open("/work/h20a/tests/unit/data/consumer_offsets_vectors.json", "w"), indent=1)
print(len(vectors))
