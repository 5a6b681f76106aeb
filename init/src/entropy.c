/* RESEED: fresh host entropy into the guest kernel's RNG (see entropy.h). */
#include "entropy.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "log.h"

/* <linux/random.h> (musl ships no kernel headers): the ioctls of /dev/urandom we use */
struct rand_pool_info {
	int entropy_count; /* bits credited */
	int buf_size;      /* bytes in buf */
	unsigned char buf[];
};
#define RNDADDENTROPY _IOW('R', 0x03, int[2])
#define RNDRESEEDCRNG _IO('R', 0x07)

int entropy_reseed(const unsigned char *seed, size_t len, struct op_error *e)
{
	struct rand_pool_info *info;
	int fd, rc = 0;

	info = malloc(sizeof(*info) + len);
	if (info == NULL)
		return op_fail(e, "ENOMEM", ENOMEM, "seed: no memory");
	info->entropy_count = (int)(len * 8);
	info->buf_size = (int)len;
	memcpy(info->buf, seed, len);
	fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = op_fail(e, "EIO", errno, "open /dev/urandom: %s", strerror(errno));
	} else if (ioctl(fd, RNDADDENTROPY, info) != 0) {
		rc = op_fail(e, "EIO", errno, "RNDADDENTROPY: %s", strerror(errno));
	} else if (ioctl(fd, RNDRESEEDCRNG) != 0) {
		/* the CRNG derives from the input pool only at its next reseed: force it now */
		rc = op_fail(e, "EIO", errno, "RNDRESEEDCRNG: %s", strerror(errno));
	}
	if (fd >= 0)
		close(fd);
	explicit_bzero(info->buf, len);
	free(info);
	if (rc == 0)
		log_msg("RNG reseeded with %zu host bytes", len);
	return rc;
}
