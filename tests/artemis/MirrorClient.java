// The seed example's client: Apache Qpid JMS with a failover URL. Commands on stdin, one a line:
//   send Q P N          sends N persistent text messages "<P>0".."<P><N-1>" to queue Q; prints
//                       "SENT N <connected-uri>"
//   receive Q N IDLE    receives from queue Q until N distinct messages arrived or none came for
//                       IDLE ms, then whatever more comes within 1 s (duplicates); prints
//                       "GOT <text> <connected-uri>" for each, then "RECEIVED <count> <distinct>"
//   quit
// Every line it prints is flushed at once; the test reads them as events.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.util.HashSet;
import java.util.Set;
import javax.jms.Connection;
import javax.jms.DeliveryMode;
import javax.jms.Message;
import javax.jms.MessageConsumer;
import javax.jms.MessageProducer;
import javax.jms.Queue;
import javax.jms.Session;
import javax.jms.TextMessage;
import org.apache.qpid.jms.JmsConnection;
import org.apache.qpid.jms.JmsConnectionFactory;

public class MirrorClient {
    public static void main(String[] args) throws Exception {
        JmsConnectionFactory cf = new JmsConnectionFactory(args[0]);
        Connection conn = cf.createConnection();
        conn.start();
        System.out.println("CONNECTED " + ((JmsConnection) conn).getConnectedURI());
        Session session = conn.createSession(false, Session.AUTO_ACKNOWLEDGE);
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        String line;
        while ((line = in.readLine()) != null) {
            String[] cmd = line.trim().split(" ");
            if (cmd[0].equals("send")) {
                Queue queue = session.createQueue(cmd[1]);
                int n = Integer.parseInt(cmd[3]);
                MessageProducer p = session.createProducer(queue);
                p.setDeliveryMode(DeliveryMode.PERSISTENT);
                for (int i = 0; i < n; i++) {
                    p.send(session.createTextMessage(cmd[2] + i));
                }
                p.close();
                System.out.println("SENT " + n + " " + ((JmsConnection) conn).getConnectedURI());
            } else if (cmd[0].equals("receive")) {
                Queue queue = session.createQueue(cmd[1]);
                int n = Integer.parseInt(cmd[2]);
                long idle = Long.parseLong(cmd[3]);
                MessageConsumer c = session.createConsumer(queue);
                Set<String> distinct = new HashSet<>();
                int count = 0;
                while (distinct.size() < n) {
                    Message m = c.receive(idle);
                    if (m == null) {
                        break;
                    }
                    String text = ((TextMessage) m).getText();
                    count++;
                    distinct.add(text);
                    System.out.println("GOT " + text + " " + ((JmsConnection) conn).getConnectedURI());
                }
                // Anything more (duplicates) that is already there.
                Message m;
                while ((m = c.receive(1000)) != null) {
                    count++;
                    String text = ((TextMessage) m).getText();
                    distinct.add(text);
                    System.out.println("GOT " + text + " " + ((JmsConnection) conn).getConnectedURI());
                }
                c.close();
                System.out.println("RECEIVED " + count + " " + distinct.size());
            } else if (cmd[0].equals("quit")) {
                break;
            }
        }
        conn.close();
        System.out.println("BYE");
    }
}
