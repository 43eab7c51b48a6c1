// The seed example's client: Apache Qpid JMS with a failover URL. Commands on stdin, one a line:
//   send N     sends N persistent text messages "m0".."m<N-1>" to queue "orders"; prints SENT N
//   receive N  receives until N distinct messages arrived or none came for 30 s; prints
//              "GOT <text> <connected-uri>" for each, then "RECEIVED <count> <distinct>"
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
        Queue queue = session.createQueue("orders");
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        String line;
        while ((line = in.readLine()) != null) {
            String[] cmd = line.trim().split(" ");
            if (cmd[0].equals("send")) {
                int n = Integer.parseInt(cmd[1]);
                MessageProducer p = session.createProducer(queue);
                p.setDeliveryMode(DeliveryMode.PERSISTENT);
                for (int i = 0; i < n; i++) {
                    p.send(session.createTextMessage("m" + i));
                }
                p.close();
                System.out.println("SENT " + n + " " + ((JmsConnection) conn).getConnectedURI());
            } else if (cmd[0].equals("receive")) {
                int n = Integer.parseInt(cmd[1]);
                MessageConsumer c = session.createConsumer(queue);
                Set<String> distinct = new HashSet<>();
                int count = 0;
                while (distinct.size() < n) {
                    Message m = c.receive(30000);
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
