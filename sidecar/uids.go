package sidecar

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// UIDRange is the block of UIDs the isolated pool gives its users, one each: a
// user's CLI runs as UID u and GID u (the same number), with no supplementary
// groups. The block must be used by nothing else on the host (no account, no
// group, no files); UIDs that /etc/passwd or /etc/group name are skipped anyway.
type UIDRange struct{ First, Count int }

// maxID is the largest usable UID/GID: (uid_t)-1 means "unchanged" to the kernel.
const maxID = 1<<32 - 2

// ParseUIDRange reads "FIRST-LAST", both included: "200000-200999" is 1000 UIDs.
func ParseUIDRange(s string) (UIDRange, error) {
	lo, hi, ok := strings.Cut(strings.TrimSpace(s), "-")
	first, err1 := strconv.ParseInt(strings.TrimSpace(lo), 10, 64)
	last, err2 := strconv.ParseInt(strings.TrimSpace(hi), 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return UIDRange{}, fmt.Errorf("UID range %q: want FIRST-LAST, e.g. 200000-200999", s)
	}
	r := UIDRange{First: int(first), Count: int(last - first + 1)}
	if last < first {
		return UIDRange{}, fmt.Errorf("UID range %q: the last UID is below the first", s)
	}
	if err := r.Validate(); err != nil {
		return UIDRange{}, fmt.Errorf("UID range %q: %w", s, err)
	}
	return r, nil
}

// Validate refuses root, the IDs the kernel reserves, and an empty block.
func (r UIDRange) Validate() error {
	switch {
	case r.Count <= 0:
		return errors.New("no UIDs in the range")
	case r.First <= 0:
		return errors.New("the range must not include UID 0 (root)")
	case r.First+r.Count-1 > maxID:
		return fmt.Errorf("the range goes past %d, the largest usable UID", maxID)
	}
	return nil
}

// Set reports whether a range was given (the zero UIDRange means none).
func (r UIDRange) Set() bool { return r.Count != 0 }

func (r UIDRange) String() string {
	if !r.Set() {
		return ""
	}
	return fmt.Sprintf("%d-%d", r.First, r.First+r.Count-1)
}

func (r UIDRange) contains(id int) bool { return id >= r.First && id < r.First+r.Count }

// ErrNoUID is returned when every UID of the range is already some user's.
var ErrNoUID = errors.New("isolated pool: no UID left in the range for a new user")

// uidTable remembers which (tenant, user) has which UID, in Root/.uids.json
// (mode 0600, the sidecar's own). A UID is never given to a second user, even
// after the first one's CLI stopped: their files still carry it. A user keeps its
// UID across restarts; the file must be kept with the homes it describes.
type uidTable struct {
	path  string
	rng   UIDRange
	byKey map[string]int // "tenant/user" -> UID
	used  map[int]string // UID -> "tenant/user"
}

type uidFile struct {
	Comment string         `json:"comment,omitempty"`
	UIDs    map[string]int `json:"uids"`
}

func loadUIDTable(path string, rng UIDRange) (*uidTable, error) {
	t := &uidTable{path: path, rng: rng, byKey: map[string]int{}, used: map[int]string{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return t, nil
	}
	if err != nil {
		return nil, fmt.Errorf("UID map %s: %w", path, err)
	}
	var f uidFile
	if err := json.Unmarshal(b, &f); err != nil {
		// Never start over from an empty map: UIDs would be given out twice.
		return nil, fmt.Errorf("UID map %s: %w (fix or restore it; do not delete it while homes exist)", path, err)
	}
	for key, uid := range f.UIDs {
		tenant, user, ok := strings.Cut(key, "/")
		if !ok || checkName("tenant", tenant) != nil || checkName("user", user) != nil || uid <= 0 || uid > maxID {
			return nil, fmt.Errorf("UID map %s: entry %q: %d is not a tenant/user and a UID", path, key, uid)
		}
		if other, dup := t.used[uid]; dup {
			return nil, fmt.Errorf("UID map %s: %q and %q both have UID %d", path, other, key, uid)
		}
		t.byKey[key], t.used[uid] = uid, key
	}
	return t, nil
}

// lookup returns key's UID if it has one in the range.
func (t *uidTable) lookup(key string) (int, bool) {
	uid, ok := t.byKey[key]
	return uid, ok && t.rng.contains(uid)
}

// assign returns key's UID, giving it one and saving the map first if it has
// none yet (or only one outside the current range). The first UID tried is a
// hash of the key, then the next ones: the same user in a new pool usually gets
// the same UID, but never one that another user holds.
func (t *uidTable) assign(key string) (uid int, fresh bool, err error) {
	if uid, ok := t.lookup(key); ok {
		return uid, false, nil
	}
	h := fnv.New32a()
	h.Write([]byte(key))
	start := int(h.Sum32() % uint32(t.rng.Count))
	for i := range t.rng.Count {
		uid := t.rng.First + (start+i)%t.rng.Count
		if _, taken := t.used[uid]; taken || accountExists(uid) {
			continue
		}
		old, had := t.byKey[key]
		t.byKey[key], t.used[uid] = uid, key
		if had {
			delete(t.used, old)
		}
		if err := t.save(); err != nil {
			delete(t.used, uid)
			if had {
				t.byKey[key], t.used[old] = old, key
			} else {
				delete(t.byKey, key)
			}
			return 0, false, err
		}
		return uid, true, nil
	}
	return 0, false, fmt.Errorf("%w (%s: %d UIDs, all given out; widen the range or retire users)", ErrNoUID, t.rng, t.rng.Count)
}

// save writes the map atomically, mode 0600.
func (t *uidTable) save() error {
	f := uidFile{Comment: "UIDs of the isolated pool's users (tenant/user); a UID is never reused: keep this file with the homes", UIDs: t.byKey}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(t.path), ".uids-*.tmp") // 0600
	if err != nil {
		return fmt.Errorf("UID map %s: %w", t.path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err = tmp.Write(append(b, '\n')); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), t.path)
	}
	if err != nil {
		return fmt.Errorf("UID map %s: %w", t.path, err)
	}
	return nil
}

// accountExists reports whether the host names uid as a user or a group: such
// an ID is someone else's and is skipped.
func accountExists(id int) bool {
	s := strconv.Itoa(id)
	if _, err := user.LookupId(s); err == nil {
		return true
	}
	_, err := user.LookupGroupId(s)
	return err == nil
}

// openDir opens path, a directory and never a symlink, so that what is checked
// and changed afterwards (through the descriptor) is what was opened.
func openDir(path string) (*os.File, *syscall.Stat_t, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: not a directory, or a symlink: %w", path, err)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, &st, nil
}

// ownDir makes path a directory (creating it) with this mode and owner.
func ownDir(path string, mode os.FileMode, uid, gid int) error {
	if err := os.Mkdir(path, mode); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	f, _, err := openDir(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Chown(uid, gid); err != nil {
		return err
	}
	return f.Chmod(mode)
}

// adopt makes dir (created if missing) uid:gid's with mode 0700. When dir
// belongs to the sidecar's own UID (just created, or a home from before UIDs
// were set), what it holds is given to uid too: only entries the sidecar's UID
// owns, never a file with more than one link (it could be another file's name),
// and through an os.Root so that nothing swapped in leads outside dir. A dir
// owned by a third UID is refused: whose files are these? (a lost or edited
// .uids.json). No process of uid runs meanwhile: its CLI starts after.
func adopt(dir string, uid, gid int) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	f, st, err := openDir(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	self := os.Geteuid()
	switch int(st.Uid) {
	case uid:
		if err := f.Chown(uid, gid); err != nil {
			return err
		}
		return f.Chmod(0o700)
	case self:
	default:
		return fmt.Errorf("%s belongs to UID %d, not %d: it is not this user's (was .uids.json lost or edited?); re-own it or restore the map", dir, st.Uid, uid)
	}
	if err := f.Chmod(0o700); err != nil { // nobody else in while it is walked
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	if top, err := root.Stat("."); err != nil {
		return err
	} else if t, ok := top.Sys().(*syscall.Stat_t); !ok || t.Dev != st.Dev || t.Ino != st.Ino {
		return fmt.Errorf("%s changed while it was opened", dir)
	}
	err = fs.WalkDir(root.FS(), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == "." {
			return err
		}
		info, err := d.Info() // lstat
		if err != nil {
			return err
		}
		est, ok := info.Sys().(*syscall.Stat_t)
		if !ok || int(est.Uid) != self || (!d.IsDir() && est.Nlink > 1) {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		return root.Lchown(path, uid, gid)
	})
	if err != nil {
		return fmt.Errorf("%s: giving it to UID %d: %w", dir, uid, err)
	}
	return f.Chown(uid, gid)
}

// searchable returns an error naming the first directory on the way to path
// (path included) that other users cannot traverse: a per-user CLI runs as an
// unprivileged UID in no group, so it needs o+x on each of them.
func searchable(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	for p := abs; ; p = filepath.Dir(p) {
		info, err := os.Stat(p)
		if err != nil {
			return err
		}
		if info.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s (mode %04o) cannot be traversed by other users; the per-user CLIs need o+x on it", p, info.Mode().Perm())
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// executableByOthers explains why command cannot run as an unprivileged UID, if
// it cannot: every directory down to it needs o+x and the file itself o+rx
// (after following symlinks: the copilot binary under .tools/node/... must be
// reachable, not only the .tools/bin/copilot link).
func executableByOthers(command string) error {
	path, err := exec.LookPath(command)
	if err != nil {
		return err
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return err
	}
	if err := searchable(filepath.Dir(real)); err != nil {
		return err
	}
	info, err := os.Stat(real)
	if err != nil {
		return err
	}
	if info.Mode().Perm()&0o005 != 0o005 {
		return fmt.Errorf("%s (mode %04o) cannot be read and run by other users; the per-user CLIs need o+rx on it", real, info.Mode().Perm())
	}
	return nil
}
