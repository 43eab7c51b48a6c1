// What Artemis's file lock does: FileChannel.lock()/tryLock() (a POSIX fcntl write lock on the
// whole file). `hold FILE`: blocks in lock(), prints LOCKED, releases on a line (or EOF) on
// stdin and prints RELEASED. `try FILE`: prints "TRY null" when another process holds a
// conflicting lock, else "TRY locked".
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.channels.FileChannel;
import java.nio.channels.FileLock;
import java.nio.file.Paths;
import java.nio.file.StandardOpenOption;

public class LockHolder {
    public static void main(String[] args) throws Exception {
        try (FileChannel ch = FileChannel.open(Paths.get(args[1]), StandardOpenOption.READ,
                StandardOpenOption.WRITE, StandardOpenOption.CREATE)) {
            if (args[0].equals("try")) {
                FileLock l = ch.tryLock();
                System.out.println(l == null ? "TRY null" : "TRY locked");
                if (l != null) {
                    l.release();
                }
                return;
            }
            System.out.println("WAITING");
            FileLock l = ch.lock();
            System.out.println("LOCKED");
            new BufferedReader(new InputStreamReader(System.in)).readLine();
            l.release();
            System.out.println("RELEASED");
        }
    }
}
