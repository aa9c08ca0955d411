// A Curator peer for lockkit's interop tests and benchmarks, run from source by the JDK
// (`java -cp <Debian's Curator jars> CuratorPeer.java 127.0.0.1:PORT`): one command per line
// in, one answer per line out. Commands:
//   start PATH ID       a LeaderLatch on PATH with participant id ID, started   -> started
//   await MILLIS        waits at most MILLIS to lead                            -> true | false
//   has                 whether it leads now                                    -> true | false
//   leader              the leader as the latch's (or selector's) getLeader() sees it
//                                                                               -> leader ID | none
//   participants        every participant's id, in order (the latch's or selector's)
//                                                                               -> ID,ID,...
//   close               closes the latch (deletes its node)                     -> closed
//   select PATH ID      a LeaderSelector on PATH with participant id ID, started; while it
//                       leads, its takeLeadership waits for `relinquish`        -> started
//   selected MILLIS     waits at most MILLIS for takeLeadership to run          -> true | false
//   relinquish          returns from takeLeadership (gives the leadership up)  -> relinquished
//   bench PATH ROUNDS   failover after a close, and getLeader() reads, between two latches of
//                       their own clients; microseconds   -> resign N,N,...;read N,N,...
// A failure answers `error <what>`.
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import java.util.concurrent.Semaphore;
import org.apache.curator.framework.recipes.leader.LeaderLatch;
import org.apache.curator.framework.recipes.leader.LeaderSelector;
import org.apache.curator.framework.recipes.leader.LeaderSelectorListenerAdapter;
import org.apache.curator.framework.recipes.leader.Participant;
import org.apache.curator.retry.RetryNTimes;

public class CuratorPeer {
    static CuratorFramework client(String connect) throws Exception {
        CuratorFramework client = CuratorFrameworkFactory.newClient(connect, 4000, 4000, new RetryNTimes(20, 100));
        client.start();
        if (!client.blockUntilConnected(20, TimeUnit.SECONDS)) throw new IllegalStateException("no connection to " + connect);
        return client;
    }

    static String leader(Participant leader) {
        return leader.isLeader() ? "leader " + leader.getId() : "none";
    }

    static String bench(String connect, String path, int rounds) throws Exception {
        CuratorFramework a = client(connect), b = client(connect);
        List<Long> resign = new ArrayList<>(), read = new ArrayList<>();
        for (int round = -5; round < rounds; round++) { // 5 rounds to warm the JIT up
            LeaderLatch first = new LeaderLatch(a, path, "a"), second = new LeaderLatch(b, path, "b");
            first.start();
            first.await();
            second.start();
            while (second.getParticipants().size() < 2) Thread.sleep(1);
            long started = System.nanoTime();
            first.close();
            second.await();
            long led = System.nanoTime();
            long reading = System.nanoTime();
            second.getLeader();
            long readDone = System.nanoTime();
            if (round >= 0) { resign.add((led - started) / 1000); read.add((readDone - reading) / 1000); }
            second.close();
        }
        a.close();
        b.close();
        return "resign " + join(resign) + ";read " + join(read);
    }

    static String join(List<Long> values) {
        StringBuilder out = new StringBuilder();
        for (Long v : values) out.append(out.length() == 0 ? "" : ",").append(v);
        return out.toString();
    }

    public static void main(String[] args) throws Exception {
        String connect = args[0];
        CuratorFramework client = null;
        LeaderLatch latch = null;
        LeaderSelector selector = null;
        Semaphore leading = new Semaphore(0), relinquished = new Semaphore(0);
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        for (String line; (line = in.readLine()) != null; ) {
            String[] words = line.trim().split(" ", 3);
            String answer;
            try {
                switch (words[0]) {
                    case "start":
                        if (client == null) client = client(connect);
                        latch = new LeaderLatch(client, words[1], words[2]);
                        latch.start();
                        answer = "started";
                        break;
                    case "await": answer = String.valueOf(latch.await(Long.parseLong(words[1]), TimeUnit.MILLISECONDS)); break;
                    case "has": answer = String.valueOf(latch.hasLeadership()); break;
                    case "leader": answer = leader(latch != null ? latch.getLeader() : selector.getLeader()); break;
                    case "participants": {
                        List<String> ids = new ArrayList<>();
                        for (Participant p : latch != null ? latch.getParticipants() : selector.getParticipants()) ids.add(p.getId());
                        answer = String.join(",", ids);
                        break;
                    }
                    case "close": latch.close(); answer = "closed"; break;
                    case "select":
                        if (client == null) client = client(connect);
                        selector = new LeaderSelector(client, words[1], new LeaderSelectorListenerAdapter() {
                            public void takeLeadership(CuratorFramework c) throws Exception {
                                leading.release();
                                relinquished.acquire();
                            }
                        });
                        selector.setId(words[2]);
                        selector.start();
                        answer = "started";
                        break;
                    case "selected":
                        answer = String.valueOf(leading.tryAcquire(Long.parseLong(words[1]), TimeUnit.MILLISECONDS));
                        break;
                    case "relinquish": relinquished.release(); answer = "relinquished"; break;
                    case "bench": answer = bench(connect, words[1], Integer.parseInt(words[2])); break;
                    default: answer = "error unknown command " + words[0];
                }
            } catch (Exception e) {
                answer = "error " + e;
            }
            System.out.println(answer);
            System.out.flush();
        }
        if (client != null) client.close();
    }
}
