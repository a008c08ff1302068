package streamrec.hadoop;

import java.io.File;
import java.io.FileNotFoundException;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.attribute.PosixFilePermission;
import java.util.EnumSet;
import java.util.Set;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.RawLocalFileSystem;
import org.apache.hadoop.fs.permission.FsPermission;
import org.apache.hadoop.io.nativeio.NativeIO;

/**
 * Hadoop's local file system without a child process per call.
 *
 * <p>Without Hadoop's native library (pyspark ships none), {@link RawLocalFileSystem} runs
 * {@code chmod} for every file or folder it creates and {@code readlink} twice for every rename,
 * each a process forked from the JVM: about 5 to 10 ms apiece, some 160 times in a micro-batch
 * of the stream (every Delta commit renames, every data file is created with a mode). This
 * class answers both from {@code java.nio.file} in the JVM, with the same results; what Java
 * cannot do (a sticky bit) still goes to Hadoop's own code.
 */
public class ForklessRawLocalFileSystem extends RawLocalFileSystem {

  private static final PosixFilePermission[] BITS = {
    PosixFilePermission.OTHERS_EXECUTE, PosixFilePermission.OTHERS_WRITE, PosixFilePermission.OTHERS_READ,
    PosixFilePermission.GROUP_EXECUTE, PosixFilePermission.GROUP_WRITE, PosixFilePermission.GROUP_READ,
    PosixFilePermission.OWNER_EXECUTE, PosixFilePermission.OWNER_WRITE, PosixFilePermission.OWNER_READ,
  };

  /** The POSIX permissions of the low nine bits of {@code mode}. */
  static Set<PosixFilePermission> posixPermissions(int mode) {
    Set<PosixFilePermission> permissions = EnumSet.noneOf(PosixFilePermission.class);
    for (int bit = 0; bit < BITS.length; bit++) {
      if ((mode & (1 << bit)) != 0) {
        permissions.add(BITS[bit]);
      }
    }
    return permissions;
  }

  @Override
  public void setPermission(Path p, FsPermission permission) throws IOException {
    if (NativeIO.isAvailable() || permission.getStickyBit()) {
      super.setPermission(p, permission);
      return;
    }
    File file = pathToFile(p);
    try {
      Files.setPosixFilePermissions(file.toPath(), posixPermissions(permission.toShort()));
    } catch (NoSuchFileException e) {
      throw new FileNotFoundException("File " + file + " does not exist");
    }
  }

  /**
   * Hadoop's lookup reads the link of {@code new File(f.toString())} with {@code readlink} and,
   * when there is none, returns {@link #getFileStatus}: the same test, made in the JVM.
   */
  @Override
  public FileStatus getFileLinkStatus(Path f) throws IOException {
    if (Files.isSymbolicLink(new File(f.toString()).toPath())) {
      return super.getFileLinkStatus(f);
    }
    return getFileStatus(f);
  }
}
