"""Attack-and-probe (bench/attacks.sh runs it; BENCHMARKS.md, "Hardening, second round"): what a normal client sees (status, p50, p99)
while an attack runs against one server on loopback. Modes:
  h2starve PORT N     N HTTP/2 connections granting window 0, each with a GET /healthz
  filters PORT        8 threads sending GET /packages with 990 metadata filters in a loop
The probe: 40 x GET /packages with a token on fresh HTTP/1.1 connections, 0.25 s apart."""
import http.client, socket, sys, threading, time
import h2.connection, h2.config, h2.settings

TOKEN = "tok"

def probe(port, n=40):
    out = []
    for _ in range(n):
        t = time.time()
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            c.request("GET", "/packages?limit=50", headers={"Authorization": f"Bearer {TOKEN}"})
            r = c.getresponse(); r.read(); status = r.status; c.close()
        except Exception as e:
            status = type(e).__name__
        out.append((status, time.time() - t))
        time.sleep(0.25)
    lat = sorted(d for _, d in out)
    statuses = {}
    for s, _ in out:
        statuses[s] = statuses.get(s, 0) + 1
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000
    return f"statuses {statuses}  p50 {p(0.5):.1f} ms  p99 {p(0.99):.1f} ms"

def starve(port, n):
    socks = []
    for _ in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            c.initiate_connection()
            c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
            sid = c.get_next_available_stream_id()
            c.send_headers(sid, [(":method", "GET"), (":path", "/healthz"), (":scheme", "http"),
                                 (":authority", "x")], end_stream=True)
            s.sendall(c.data_to_send())
            socks.append(s)
        except Exception as e:
            print("starve connect:", type(e).__name__)
    return socks

def filters(port, stop):
    q = "&".join(f"metadata.k{i}=v{i}" for i in range(990))
    def run():
        while not stop.is_set():
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                c.request("GET", "/packages?" + q, headers={"Authorization": f"Bearer {TOKEN}"})
                c.getresponse().read(); c.close()
            except Exception:
                time.sleep(0.05)
    ts = [threading.Thread(target=run, daemon=True) for _ in range(8)]
    [t.start() for t in ts]

if __name__ == "__main__":
    mode, port = sys.argv[1], int(sys.argv[2])
    print("quiet:   ", probe(port, 20))
    if mode == "h2starve":
        socks = starve(port, int(sys.argv[3]))
        time.sleep(3)
        print("attacked:", probe(port))
    elif mode == "filters":
        stop = threading.Event(); filters(port, stop); time.sleep(2)
        print("attacked:", probe(port)); stop.set()
